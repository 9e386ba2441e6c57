"""Delta pre-copy on real CRIU: two live snapshots 1 s apart, the delta between them, applied.

    sudo .venv/bin/python benchmarks/delta.py [--sizes 64,256] [--rates 1,10,50]
        [--repeat 3] [--dir /dev/shm] [--json docs/benchmarks/delta.json]

For each size (MB) and dirty rate (% of pages per second), a container started
by ``workers.runtimes.launch`` holds that much non-zero data and rewrites a tenth of
the rate's pages every 100 ms. It is snapshotted with ``criu dump
--leave-running`` twice, the dumps starting 1 s apart, into ``--dir``;
``make_delta`` compares the two, ``apply_delta`` rebuilds the second from the
first and verifies it. "changed" is the bytes of the 4 KiB blocks that differ
(the container's data, a page hit twice counted once, and whatever the
interpreter itself touched); "out" is everything to send (deltas, whole files,
manifest); "freeze" is CRIU's frozen time for the second snapshot; "(cpu)" is
the process CPU time of make and apply, both threads, which is what they cost
when the machine's cores are not shared with other work. Each row is the
median of ``--repeat`` fresh containers, field by field.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from workers import procs
from workers.criu.adapter import Criu
from workers.dataplane.delta import apply_delta, make_delta

DIRTIER = """\
import os, random, sys, time
P = 4096
buf = bytearray(os.urandom(int(sys.argv[1]) << 20))  # incompressible: zstd cannot shrink it
pages = len(buf) // P
per_tick = pages * int(sys.argv[2]) // 1000
i = 0
while True:
    for p in random.sample(range(pages), per_tick):
        buf[p * P] = buf[p * P] % 255 + 1
    print("tick", i, flush=True)
    i += 1
    time.sleep(0.1)
"""


@dataclass(frozen=True)
class Row:
    size_mb: int
    dirty_pct_s: int
    freeze_ms: float
    make_s: float
    make_cpu_s: float  # both threads: what make_delta costs when the cores are not shared
    changed_bytes: int
    out_bytes: int
    ratio: float  # out / changed
    apply_s: float
    apply_cpu_s: float
    image_bytes: int
    files_delta: int  # 1: the pages image went as a delta (its pagemap had not changed)


def one(size_mb: int, rate: int, work: Path) -> Row:
    """Two snapshots of a fresh dirtier container, the delta between them, applied."""
    box = Path(tempfile.mkdtemp(dir=work))
    log = box / "log"
    argv = [
        sys.executable,
        "-m",
        "workers.runtimes.launch",
        "--name",
        "dirtier",
        "--dir",
        str(box),
        "--log",
        str(log),
        "--",
        sys.executable,
        "-u",
        "-c",
        DIRTIER,
        str(size_mb),
        str(rate),
    ]
    pid = int(subprocess.run(argv, capture_output=True, text=True, check=True, cwd=ROOT).stdout)
    try:
        _wait_for_ticks(log, 3)
        criu = Criu()
        first = time.monotonic()
        criu.dump(pid, box / "d1", leave_running=True)
        time.sleep(max(0.0, 1.0 - (time.monotonic() - first)))
        second = criu.dump(pid, box / "d2", leave_running=True)
        cpu = time.process_time()
        stats = make_delta(box / "d1", box / "d2", box / "out")
        make_cpu, cpu, started = time.process_time() - cpu, time.process_time(), time.monotonic()
        apply_delta(box / "d1", box / "out", box / "target")
        apply_s, apply_cpu = time.monotonic() - started, time.process_time() - cpu
    finally:
        procs.kill_and_wait(pid)
    shutil.rmtree(box)
    changed = stats.blocks_changed * 4096
    return Row(
        size_mb=size_mb,
        dirty_pct_s=rate,
        freeze_ms=round(second.frozen_ms, 1),
        make_s=round(stats.seconds, 3),
        make_cpu_s=round(make_cpu, 3),
        changed_bytes=changed,
        out_bytes=stats.bytes_out,
        ratio=round(stats.bytes_out / changed, 3) if changed else float("inf"),
        apply_s=round(apply_s, 3),
        apply_cpu_s=round(apply_cpu, 3),
        image_bytes=stats.bytes_total,
        files_delta=stats.files_delta,
    )


def median(rows: list[Row]) -> Row:
    """Each field's median over the runs of one cell."""
    values = {f.name: statistics.median(getattr(r, f.name) for r in rows) for f in fields(Row)}
    return Row(**{k: type(getattr(rows[0], k))(v) for k, v in values.items()})


def _wait_for_ticks(log: Path, n: int, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if log.exists() and log.read_text().count("tick ") >= n:
            return
        time.sleep(0.05)
    raise TimeoutError(f"the dirtier printed fewer than {n} ticks in {timeout_s:.0f} s: {log}")


HEADER = (
    f"{'size':>6} {'dirty':>7} {'freeze':>8} {'make':>7} {'(cpu)':>7} {'changed':>9} "
    f"{'out':>9} {'ratio':>6} {'apply':>7} {'(cpu)':>7} {'delta?':>6}"
)


def _print_row(r: Row) -> None:
    print(
        f"{r.size_mb:>4}MB {r.dirty_pct_s:>5}%/s {r.freeze_ms:>6.0f}ms {r.make_s:>6.3f}s "
        f"{r.make_cpu_s:>6.3f}s {r.changed_bytes / 1e6:>7.1f}MB {r.out_bytes / 1e6:>7.1f}MB "
        f"{r.ratio:>6.3f} {r.apply_s:>6.3f}s {r.apply_cpu_s:>6.3f}s "
        f"{'yes' if r.files_delta else 'no':>6}",
        flush=True,
    )


def markdown(doc: dict[str, Any]) -> str:
    """The saved run as docs/BENCHMARKS.md's table."""
    out = [
        "| MiB | dirtied/s | pass freeze | diff | diff CPU | changed | sent | apply | apply CPU |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in doc["rows"]:
        out.append(
            f"| {r['size_mb']} | {r['dirty_pct_s']} % | {r['freeze_ms']:.0f} ms | {r['make_s']:.3f} s "
            f"| {r['make_cpu_s']:.3f} s | {r['changed_bytes'] / 2**20:.1f} MiB "
            f"| {r['out_bytes'] / 2**20:.1f} MiB | {r['apply_s']:.3f} s | {r['apply_cpu_s']:.3f} s |"
        )
    out.append(
        f"\n{doc['cpus']} CPUs, kernel {doc['kernel']}, CRIU {doc['criu']}, images in {doc['dir']}, "
        f"{doc['block']}-byte blocks, median of {doc['repeat']}; load {doc['load_average_1m']}"
    )
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--sizes", default="64,256")
    parser.add_argument("--rates", default="1,10,50")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=Path("/dev/shm"))
    parser.add_argument("--json", type=Path, default=ROOT / "docs/benchmarks/delta.json")
    parser.add_argument("--markdown", action="store_true", help="print the saved JSON as markdown")
    args = parser.parse_args()
    if args.markdown:
        print(markdown(json.loads(args.json.read_text())))
        return
    load = round(os.getloadavg()[0], 2)
    print(
        f"{os.cpu_count()} CPUs, CRIU {Criu().version()}, images in {args.dir}, "
        f"median of {args.repeat}; load average {load}"
    )
    print(HEADER)
    rows = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="ferry-bench-") as work:
        for size in (int(s) for s in args.sizes.split(",")):
            for rate in (int(r) for r in args.rates.split(",")):
                rows.append(median([one(size, rate, Path(work)) for _ in range(args.repeat)]))
                _print_row(rows[-1])
    report = {
        "what": "delta pre-copy: two criu dump --leave-running 1 s apart, make_delta, apply_delta",
        "cpus": os.cpu_count(),
        "kernel": os.uname().release,
        "criu": Criu().version(),
        "dir": str(args.dir),
        "repeat": args.repeat,
        "block": 4096,
        "load_average_1m": [load, round(os.getloadavg()[0], 2)],  # at start, at end
        "seconds": round(time.monotonic() - started, 1),
        "rows": [asdict(r) for r in rows],
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.json} in {report['seconds']} s")


if __name__ == "__main__":
    main()
