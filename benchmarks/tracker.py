"""Pre-copy on the uffd-wp tracker beside cold and delta: pauses, downtime, worker memory.

    sudo .venv/bin/python benchmarks/tracker.py               # 256 MiB, 1 and 10 %/s, 3 runs
    sudo .venv/bin/python benchmarks/tracker.py --sizes 256,1024 --rates 1,10 --runs 5 \\
        --links loopback,1gbit
    .venv/bin/python benchmarks/tracker.py --markdown         # the saved table

Real CRIU, two real workers: on ``loopback`` both on this host with an
embedded Redis; on ``1gbit`` each in its own network namespace of the testbed
(tests/e2e/netcluster.py), node to node shaped to 1 Gbit/s. The
workload holds SIZE MiB of random bytes, rewrites RATE % of its pages per
second (every 10 ms the next slice of a cursor walking its memory, each
rewrite changing the page's first byte) and prints ``time.time()`` every 10 ms.
One container per (size, rate) moves back and forth, ``cold``, ``delta`` and
``precopy`` taking turns; on a kernel without soft-dirty, ``precopy`` runs on
the uffd-wp tracker (workers.tracker) and the run says which tracker each
migration used.

Columns, each the median of ``--runs`` migrations:

``felt``         the workload's own longest silence in the migration, less its
                 median tick
``felt passes``  its longest silence before the final dump froze it
``pass pause``   ferry's longest pause of a pass (delta: a full dump; the
                 tracker: the ptrace stops of its first pass)
``downtime``     ferry's final downtime (freeze until the restored tree ran)
``dump`` / ``split`` / ``wire`` / ``rebuild`` / ``restore``  its parts: CRIU's
                 frozen time in the final dump; the tracker's split of the dump
                 (the last scan, what the destination lacks, BLAKE3) or delta's
                 diff; the final transfer; the destination's rebuild of the
                 images; ``criu restore``
``worker +``     the peak private resident memory (RssAnon: not the files
                 they map to hash or send) of the source's worker, its tasks
                 and the tracker process during the migration, over what they
                 held just before it
``bytes``        everything sent
``load``         the 1-minute load average as the migrations started (2 cores
                 shared with other work skew every number)
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
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.cold import testbed_cluster
from benchmarks.machine import footer, kill_all, machine, ms
from benchmarks.pauses import felt_ms, ticks_in
from tasks.api.client import Ferry
from tasks.api.localcluster import LocalCluster
from tasks.config.broker import stop_embedded
from tasks.core.summary import summary
from workers import procs

WORKLOAD = """\
import os, sys, time
mem = bytearray(os.urandom(int(sys.argv[1]) << 20))
pages = len(mem) // 4096
rate = pages * float(sys.argv[2]) / 100  # pages per second
p, owed, last = 0, 0.0, time.monotonic()
while True:
    now = time.monotonic()
    owed += rate * min(now - last, 0.02)  # a freeze is not caught up afterwards
    last = now
    while owed >= 1:
        mem[p * 4096] = (mem[p * 4096] + 1) % 256
        p, owed = (p + 1) % pages, owed - 1
    print(f"{time.time():.6f}", flush=True)
    time.sleep(0.01)
"""
STRATEGIES = ("cold", "delta", "precopy")
NODES = ("n1", "n2")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="benchmarks/tracker.py", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--sizes", default="256", help="MiB, comma separated")
    parser.add_argument("--rates", default="1,10", help="%% of pages rewritten per second")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--strategies", default=",".join(STRATEGIES))
    parser.add_argument("--links", default="loopback", help="loopback and/or 1gbit (the testbed)")
    parser.add_argument(
        "--wait-testbed", type=float, default=600.0, help="s to wait for the subnet"
    )
    parser.add_argument("--markdown", action="store_true", help="print the saved JSON as markdown")
    parser.add_argument("--dir", default=tempfile.gettempdir(), help="where state dirs go")
    parser.add_argument("--json", default=str(ROOT / "docs" / "benchmarks" / "tracker.json"))
    args = parser.parse_args(argv)
    if args.markdown:
        print(markdown(json.loads(Path(args.json).read_text())))
        return 0
    started = time.monotonic()
    rows: list[dict[str, Any]] = []
    for link in args.links.split(","):
        if link == "loopback":
            context = cluster(Path(args.dir))
        elif link == "1gbit":
            context = testbed(Path(args.dir), args.wait_testbed)
        else:
            parser.error(f"unknown link {link!r}: loopback or 1gbit")
        with context as (client, nodes, workers):
            for size in (int(s) for s in args.sizes.split(",")):
                for rate in (float(r) for r in args.rates.split(",")):
                    cell = run_cell(
                        client, nodes, workers, size, rate, args.strategies.split(","), args.runs
                    )
                    rows += [{"link": link, **r} for r in cell]
    doc = {"rows": rows, "machine": machine(), "elapsed_s": round(time.monotonic() - started)}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(doc, indent=1) + "\n")
    print(markdown(doc))
    return 0 if all(r["failed"] == 0 for r in rows) else 1


Workers = dict[str, "subprocess.Popen[bytes]"]


@contextmanager
def cluster(where: Path) -> Iterator[tuple[Ferry, list[str], Workers]]:
    base = Path(tempfile.mkdtemp(prefix="ferry-bench-tracker-", dir=where))
    env = {k: v for k, v in os.environ.items() if not k.startswith("FERRY_")}
    c = LocalCluster(base, env)
    try:
        c.start_coordinator()
        for n in NODES:
            c.start_node(n)
        c.wait_ready(list(NODES))
        yield c.client, list(NODES), {n: c.procs[n] for n in NODES}
    finally:
        kill_all(c.client)
        c.stop()
        stop_embedded(base)
        shutil.rmtree(base, ignore_errors=True)


@contextmanager
def testbed(where: Path, wait_s: float) -> Iterator[tuple[Ferry, list[str], Workers]]:
    with testbed_cluster(where, wait_s) as (client, c, _):
        for node in c.nodes:
            c.bed.shape(node, "1gbit")
        client.settings = client.settings.with_(link_bps=125e6)
        yield client, list(c.nodes)[:2], dict(c.workers)


def run_cell(
    client: Ferry,
    nodes: list[str],
    workers: Workers,
    size: int,
    rate: float,
    strategies: list[str],
    runs: int,
) -> list[dict[str, Any]]:
    name = f"tracker-{size}-{rate:g}"
    info = client.run(
        nodes[0], [sys.executable, "-u", "-c", WORKLOAD, str(size), str(rate)], name=name
    )
    ticks_in(info["log"], 200, timeout_s=120)
    here = nodes[0]
    samples: dict[str, list[dict[str, Any]]] = {s: [] for s in strategies}
    try:
        for _ in range(runs):
            for strategy in strategies:
                there = nodes[1] if here == nodes[0] else nodes[0]
                s = migrate(client, workers, name, here, there, strategy, info["log"])
                samples[strategy].append(s)
                print(
                    json.dumps({"size_mib": size, "rate": rate, **s}), file=sys.stderr, flush=True
                )
                if s["state"] == "done":
                    here = there
                time.sleep(1.0)
    finally:
        client.kill(name)
    return [row(size, rate, s, samples[s]) for s in strategies]


def worker_rss(workers: Workers, node: str) -> int:
    """The private resident memory (RssAnon) of ``node``'s worker processes and their
    tasks' children (the tracker), not of the containers: files they map to hash or send
    (page cache, RssFile) are left out."""
    total = 0
    for pid in procs.tree(workers[node].pid):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            status = Path(f"/proc/{pid}/status").read_text().splitlines()
        except OSError:
            continue
        if b"-c" in cmd:
            continue  # a container's workload
        total += sum(int(ln.split()[1]) * 1024 for ln in status if ln.startswith("RssAnon:"))
    return total


def migrate(
    client: Ferry, workers: Workers, name: str, src: str, to: str, strategy: str, log: str
) -> dict[str, Any]:
    load = os.getloadavg()[0]  # other work on the machine skews every number
    base = worker_rss(workers, src)
    peak = [base]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.02):
            peak[0] = max(peak[0], worker_rss(workers, src))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    m = client.migrate(name, to, strategy=strategy).wait(timeout=600)
    done.set()
    sampler.join()
    time.sleep(0.5)
    s = summary(m)
    r = m.results
    dump, restore = r.get("dump", {}), r.get("restore", {})
    freeze_at = dump.get("freeze_start")
    split = dump.get("tracker", {}).get("seconds", 0) * 1000 or r.get("transfer", {}).get(
        "delta_ms"
    )
    return {
        "strategy": strategy,
        "tracker": r.get("precopy", {}).get(
            "tracker", "soft-dirty" if strategy == "precopy" else None
        ),
        "state": m.state.value,
        "passes": len(m.passes),
        "felt_ms": felt_ms(log, m.created, m.updated + 0.5),
        "felt_passes_ms": felt_ms(log, m.created, freeze_at) if freeze_at and m.passes else None,
        "pass_pause_ms": max((p["freeze_ms"] for p in m.passes), default=None),
        "downtime_ms": s.get("downtime_ms"),
        "dump_ms": dump.get("frozen_ms"),
        "split_ms": split,
        "wire_ms": r.get("transfer", {}).get("wall_ms"),
        "rebuild_ms": restore.get("rebuild_ms"),
        "restore_ms": restore.get("restore_ms"),
        "worker_extra_mib": round((peak[0] - base) / 2**20, 1),
        "bytes": s["bytes"],
        "load": round(load, 2),
    }


KEYS = (
    "felt_ms", "felt_passes_ms", "pass_pause_ms", "downtime_ms", "dump_ms", "split_ms",
    "wire_ms", "rebuild_ms", "restore_ms", "worker_extra_mib", "bytes", "passes", "load",
)  # fmt: skip


def row(size: int, rate: float, strategy: str, samples: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [s for s in samples if s["state"] == "done"]

    def med(key: str) -> float | None:
        values = [s[key] for s in ok if s.get(key) is not None]
        return round(statistics.median(values), 1) if values else None

    return {
        "size_mib": size,
        "rate": rate,
        "strategy": strategy,
        "tracker": sorted({str(s["tracker"]) for s in ok if s["tracker"]}),
        "runs": len(samples),
        "failed": len(samples) - len(ok),
        **{k: med(k) for k in KEYS},
        "samples": samples,
    }


def markdown(doc: dict[str, Any]) -> str:
    out = [
        "| link | MiB | %/s | strategy | felt | felt passes | pass pause | downtime | dump | split "
        "| wire | rebuild | restore | worker + | bytes | vs cold | load |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    rows = doc["rows"]
    for r in rows:
        cold = next(
            (x["felt_ms"] for x in rows if x["strategy"] == "cold"
             and (x.get("link"), x["size_mib"], x["rate"])
             == (r.get("link"), r["size_mib"], r["rate"])),
            None,
        )  # fmt: skip
        ratio = f"{r['felt_ms'] / cold:.2f}x" if cold and r["felt_ms"] is not None else "-"
        name = r["strategy"] + (f" ({', '.join(r['tracker'])})" if r["tracker"] else "")
        out.append(
            f"| {r.get('link', 'loopback')} | {r['size_mib']} | {r['rate']:g} | {name} | "
            + " | ".join(ms(r[k]) for k in KEYS[:9])
            + f" | {_mib(r['worker_extra_mib'])} | {_bytes(r['bytes'])} | {ratio} | "
            + ("-" if r.get("load") is None else f"{r['load']:.1f}")
            + " |"
        )
    out.append(footer(doc, rows[0]["runs"] if rows else 0))
    return "\n".join(out)


def _mib(v: float | None) -> str:
    return "-" if v is None else f"{v:.0f} MiB"


def _bytes(v: float | None) -> str:
    return "-" if v is None else f"{v / 2**20:.0f} MiB"


if __name__ == "__main__":
    sys.exit(main())
