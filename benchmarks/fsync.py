"""What syncing a container's node-local dir costs inside the freeze window.

    sudo .venv/bin/python benchmarks/fsync.py          # loopback, three data sets (~3 min)
        [--sets 10000x4k,100x1m,10x50m] [--runs 4] [--dir /tmp]
        [--json docs/benchmarks/fsync.json]
    .venv/bin/python benchmarks/fsync.py --markdown    # the saved table, as markdown

Each data set (N files of a size: ``10000x4k`` is 10,000 files of 4 KiB) is
written into a directory of a small container (a counter) that appends a line
to a file of it every 20 ms, keeping the file open: only a little changes while
it runs. The container is migrated cold, ``--runs`` times back and forth
between two nodes with real CRIU, in two ways:

- ``sync``: the dir is node-local and declared (``ferry run --sync``): each
  node worker runs in its own mount namespace with its own "disk" mounted on
  the common path (tasks.api.localcluster ``mounts``), so the dir really moves:
  a first rsync pass while the container runs, and a final pass inside the
  freeze window;
- ``shared``: the same data on storage both nodes see, nothing synced: what
  the same migration costs with shared storage.

Downtime and its parts come from tasks.core.summary (medians over the runs);
``fsync`` is the final pass plus stopping the destination's rsync daemons.
Loopback only: both nodes, the coordinator and rsync share this host's CPUs
(and other people's work on them: the load is recorded with each row).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.machine import kill_all, machine
from tasks.api.client import Ferry
from tasks.api.localcluster import LocalCluster
from tasks.config.broker import stop_embedded
from tasks.core.summary import downtime

NODES = ("n1", "n2")
WRITER = (
    "import os, sys, time\n"
    "f = open(os.path.join(sys.argv[1], 'lines'), 'a')\n"
    "i = 0\n"
    "while True:\n"
    "    f.write(f'{i}\\n'); f.flush(); i += 1; time.sleep(0.02)\n"
)
UNITS = {"k": 1 << 10, "m": 1 << 20}
COLUMNS = ("downtime_ms", "fsync_ms", "criu_freeze_ms", "wire_ms", "restore_ms", "overhead_ms")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/fsync.py", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--sets",
        default="10000x4k,100x1m,10x50m",
        help="data sets, comma separated: FILESxSIZE (k, m)",
    )
    parser.add_argument("--runs", type=int, default=4)
    parser.add_argument("--markdown", action="store_true", help="print the saved JSON as markdown")
    parser.add_argument("--dir", default=tempfile.gettempdir(), help="where state dirs go")
    parser.add_argument("--json", default=str(ROOT / "docs" / "benchmarks" / "fsync.json"))
    args = parser.parse_args(argv)
    if args.markdown:
        print(markdown(json.loads(Path(args.json).read_text())))
        return 0
    if os.geteuid() != 0:
        print("error: real CRIU and mount namespaces need root", file=sys.stderr)
        return 2
    started = time.monotonic()
    rows = []
    with disks_cluster(Path(args.dir)) as (client, base):
        for spec in args.sets.split(","):
            files, size = parse_set(spec)
            for way in ("shared", "sync"):
                rows.append(run_cell(client, base, spec, files, size, way, args.runs))
    elapsed = time.monotonic() - started
    print(f"\n{len(rows)} cells in {elapsed:.0f} s")
    write_json(Path(args.json), rows, args, elapsed)
    return 0 if all(r["state"] == "ok" for r in rows) else 1


def parse_set(spec: str) -> tuple[int, int]:
    files, _, size = spec.partition("x")
    return int(files), int(size[:-1]) * UNITS[size[-1].lower()]


@contextmanager
def disks_cluster(where: Path) -> Iterator[tuple[Ferry, Path]]:
    """Two nodes, each with its own disk on ``<base>/local``; an embedded Redis of their own."""
    base = Path(tempfile.mkdtemp(prefix="ferry-bench-fsync-", dir=where))
    (base / "local").mkdir()
    for n in NODES:
        (base / f"{n}-disk").mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FERRY_")}
    env["FERRY_SYNC_ROOTS"] = str(base / "local")
    cluster = LocalCluster(
        base, env, mounts={n: {base / f"{n}-disk": base / "local"} for n in NODES}
    )
    try:
        cluster.start_coordinator()
        for n in NODES:
            cluster.start_node(n)
        cluster.wait_ready(list(NODES))
        yield cluster.client, base
    finally:
        kill_all(cluster.client)
        cluster.stop()
        stop_embedded(base)
        shutil.rmtree(base, ignore_errors=True)


def fill(d: Path, files: int, size: int) -> None:
    d.mkdir(parents=True)
    for i in range(files):
        sub = d / f"{i // 1000:03d}"
        sub.mkdir(exist_ok=True)
        (sub / f"f{i}").write_bytes(os.urandom(size))


def run_cell(
    client: Ferry, base: Path, spec: str, files: int, size: int, way: str, runs: int
) -> dict[str, Any]:
    name = f"fs-{way}-{spec.replace('x', '-')}"
    t0, load_before = time.monotonic(), os.getloadavg()[0]
    if way == "sync":
        job, disk = base / "local" / name, base / f"{NODES[0]}-disk" / name
        fill(disk, files, size)
        client.run(
            NODES[0], [sys.executable, "-u", "-c", WRITER, str(job)], name=name, sync=[str(job)]
        )
    else:
        job = base / "shared-data" / name  # both nodes see it: nothing to sync
        fill(job, files, size)
        client.run(NODES[0], [sys.executable, "-u", "-c", WRITER, str(job)], name=name)
    time.sleep(1)
    samples, errors = [], []
    try:
        for i in range(runs):
            m = client.migrate(name, NODES[(i + 1) % 2], strategy="cold").wait(timeout=600)
            if m.state.value != "done":
                errors.append(f"run {i}: {m.state.value}: {'; '.join(m.errors)}")
                break
            first, final = m.results.get("sync", {}), m.results.get("final_sync", {})
            samples.append(
                {
                    **(downtime(m) or {}),
                    "total_s": round(m.updated - m.created, 3),
                    "first_pass_ms": first.get("wall_ms", 0.0),
                    "first_pass_bytes": first.get("bytes", 0),
                    "final_pass_bytes": final.get("bytes", 0),
                    "final_pass_files": final.get("files", 0),
                    "id": m.id,
                }
            )
            time.sleep(0.5)
    finally:
        client.kill(name)
    row: dict[str, Any] = {
        "set": spec,
        "files": files,
        "mib": round(files * size / 2**20, 1),
        "way": way,
        "runs": len(samples),
        "state": "failed" if errors else "ok",
        "cell_s": round(time.monotonic() - t0, 1),
        "load1_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "measured": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "samples": samples,
    }
    if errors:
        row["errors"] = errors
    for col in (*COLUMNS, "total_s", "first_pass_ms", "first_pass_bytes", "final_pass_bytes"):
        if samples:
            row[col] = round(statistics.median(s[col] for s in samples), 1)
    print(line(row), flush=True)
    return row


def line(r: dict[str, Any]) -> str:
    if "downtime_ms" not in r:
        return f"{r['set']:>10} {r['way']:>6}  {r['state']}: {'; '.join(r.get('errors', []))}"
    return (
        f"{r['set']:>10} {r['mib']:>7.1f} MiB {r['way']:>6}  downtime {r['downtime_ms']:>6.0f}"
        f"  fsync {r['fsync_ms']:>6.0f}  final {r['final_pass_bytes'] / 1024:>7.1f} KiB"
        f"  first pass {r['first_pass_ms']:>7.0f} ms  total {r['total_s']:>5.1f} s"
        f"  load {r['load1_before_after']}"
    )


def markdown(doc: dict[str, Any]) -> str:
    """The saved rows as a markdown table (ms; medians over the runs)."""
    out = [
        (
            "| data set | MiB | dir | downtime | fsync (final pass) | criu freeze | wire | restore "
            "| overhead | final pass bytes | first pass | total | load 1 min |"
        ),
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in doc["rows"]:
        if "downtime_ms" not in r:
            out.append(f"| {r['set']} | {r['mib']} | {r['way']} | {r['state']} ||||||||||")
            continue
        first = f"{r['first_pass_ms'] / 1000:.1f} s" if r["way"] == "sync" else "-"
        out.append(
            f"| {r['set']} | {r['mib']:.0f} | {r['way']} | {r['downtime_ms']:.0f} "
            f"| {r['fsync_ms']:.0f} | {r['criu_freeze_ms']:.0f} | {r['wire_ms']:.0f} "
            f"| {r['restore_ms']:.0f} | {r['overhead_ms']:.0f} "
            f"| {r['final_pass_bytes'] / 1024:.0f} KiB | {first} | {r['total_s']:.1f} s "
            f"| {r['load1_before_after'][0]}-{r['load1_before_after'][1]} |"
        )
    return "\n".join(out)


def write_json(
    path: Path, rows: list[dict[str, Any]], args: argparse.Namespace, elapsed: float
) -> None:
    doc = {
        "benchmark": "cold migration downtime with a node-local dir synced (rsync) vs the "
        "same data on shared storage (tasks.core.summary.downtime)",
        "units": {
            "*_ms": "milliseconds, median over runs",
            "fsync_ms": "rsync's final pass inside the freeze window plus stopping the "
            "destination's daemons, median",
            "first_pass_ms": "rsync's first pass, while the container runs, median",
            "*_bytes": "bytes rsync sent (its protocol included), median",
            "total_s": "submit to done, median",
        },
        "conditions": "loopback: both nodes, the coordinator and rsync on this host's 2 CPUs, "
        "shared with other engineers' test runs (load1_before_after per row)",
        "machine": machine(),
        "generated": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "last_command": " ".join(["benchmarks/fsync.py", *sys.argv[1:]]),
        "last_run_s": round(elapsed, 1),
        "runs": args.runs,
        "rows": rows,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    sys.exit(main())
