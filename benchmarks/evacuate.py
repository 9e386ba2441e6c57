"""Evacuation makespan against its lower bound, and downtime per container, vs concurrency.

    .venv/bin/python benchmarks/evacuate.py                       # real CRIU, then sim (~8 min)
    .venv/bin/python benchmarks/evacuate.py --only real --testbed --wait-testbed 300
    .venv/bin/python benchmarks/evacuate.py --only sim --sim 200 --concurrency 2,4,8
        [--sizes 32,48,64,80,96,128] [--strategy cold] [--budget-s 540]
        [--json docs/benchmarks/evacuate.json]

Each cell starts fresh containers on node1 and evacuates them to node2 and
node3 with ``max_parallel = per_node = c``, then reads the evacuation report:
makespan (start to last outcome), the lower bound (tasks.core.planner.lower_bound_s
over what moved: node1's bytes over its link) and each container's downtime.

``real``: ferry's own containers under real CRIU, each holding SIZE MiB of
written pages, ticking. Over ``--testbed`` (tests/e2e/netcluster.py: every
node in its own netns, 1gbit tbf-shaped links; one testbed per machine, so the
run waits ``--wait-testbed`` s for another to go down, else falls back) the
bound uses 125 MB/s. On loopback nothing limits the link, so the bound uses
the data plane's throughput as measured by the c=1 cell, and says so.

``sim``: SIMULATED nodes (the sim runtime models dump and restore times and
sends each container's memory, docs/sim.md), 1 MiB containers: this measures
the control plane (queues, coordinator, the evacuation tick) at scale, so no
bound is given, only moves per second (benchmarks/scale.py measures it
against its bound on 32 nodes).

A cell that would not fit in what is left of ``--budget-s`` is skipped and
the JSON says so. Rows of another kind, link or strategy are kept from the
existing file, and so are keys this script does not write (``findings``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
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

from tasks.api.client import Ferry
from tasks.api.localcluster import LocalCluster
from tasks.config.broker import stop_embedded
from tasks.core.evacplan import bound_s, plan_from_json
from workers.errors import BadRequest

HOLDER = (
    "import os, sys, time\n"
    "hold = bytearray(os.urandom(int(sys.argv[1]) << 20))  # every page written, incompressible\n"
    "i = 0\n"
    "while True:\n"
    "    print('tick', i, flush=True); i += 1; time.sleep(0.05)\n"
)
NODES = ["node1", "node2", "node3"]
TESTBED_BPS = 125e6  # a 1gbit tbf link
SETUP_S = {"real": 20.0, "sim": 60.0}  # starting and killing a cell's containers
SIM_RACE = (
    "workers/runtimes/sim.py saves every container record through one fixed <name>.tmp: two "
    "processes saving one container at once collide (FileNotFoundError), which fails "
    "that run, phase or inventory; a unique temp name per writer fixes it"
)


def markdown(doc: dict[str, Any]) -> str:
    """The saved run as docs/BENCHMARKS.md's table."""
    out = [
        "| kind | link | strategy | containers | MiB | concurrency | makespan | bound | ratio "
        "| moves/s | downtime mean | max |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in doc["rows"]:
        bound = f"{r['lower_bound_s']:.2f} s" if r.get("lower_bound_s") else "-"
        ratio = f"{r['ratio']:.2f}" if r.get("ratio") else "-"
        out.append(
            f"| {r['kind']} | {r['link']} | {r['strategy']} | {r['containers']} | {r['mib_total']} "
            f"| {r['concurrency']} | {r['makespan_s']:.2f} s | {bound} | {ratio} | {r['moves_per_s']} "
            f"| {r['downtime_ms_mean']:.0f} ms | {r['downtime_ms_max']:.0f} ms |"
        )
    m = doc["machine"]
    out.append(f"\n{m['cpus']} CPUs, kernel {m['kernel']}; {doc['generated']}; {doc['command']}")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="benchmarks/evacuate.py", description=__doc__.split("\n")[0])
    ap.add_argument("--only", choices=["real", "sim"], default=None)
    ap.add_argument("--sizes", default="32,48,64,80,96,128", help="real: MiB per container")
    ap.add_argument("--sim", type=int, default=200, help="sim: containers")
    ap.add_argument("--concurrency", default="1,2,4,8")
    ap.add_argument("--strategy", default="cold")
    ap.add_argument("--testbed", action="store_true", help="real: over 1gbit testbed links")
    ap.add_argument("--wait-testbed", type=float, default=0.0, help="s to wait for the subnet")
    ap.add_argument("--budget-s", type=float, default=540.0)
    ap.add_argument("--json", default=str(ROOT / "docs" / "benchmarks" / "evacuate.json"))
    ap.add_argument("--note", default="", help="recorded with each row (e.g. a local patch)")
    ap.add_argument("--markdown", action="store_true", help="print the saved JSON as markdown")
    args = ap.parse_args(argv)
    if args.markdown:
        print(markdown(json.loads(Path(args.json).read_text())))
        return 0
    levels = [int(c) for c in args.concurrency.split(",")]
    deadline = time.monotonic() + args.budget_s
    rows: list[dict[str, Any]] = []
    if args.only in (None, "real"):
        if os.geteuid() != 0:
            raise SystemExit("error: real CRIU needs root (or: --only sim)")
        sizes = [int(s) for s in args.sizes.split(",")]
        with real_cluster(args.testbed, args.wait_testbed) as (client, link):
            rows += run_kind(client, "real", link, sizes, levels, args.strategy, deadline)
    if args.only in (None, "sim"):
        with local_cluster(sim=True) as client:
            rows += run_kind(
                client, "sim", "loopback", [1] * args.sim, levels, args.strategy, deadline
            )
    for r in rows:
        if args.note:
            r["note"] = args.note
    print_table(rows)
    write_json(Path(args.json), rows, " ".join(sys.argv))
    return 0


@contextmanager
def local_cluster(sim: bool) -> Iterator[Ferry]:
    """Three nodes and a coordinator on this host, with an embedded Redis of their own."""
    base = Path(tempfile.mkdtemp(prefix="ferry-bench-evac-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("FERRY_")}
    env.update(FERRY_HEARTBEAT_S="1")
    if sim:  # fewer inventory rewrites: the sim runtime's saves race (see SIM_RACE)
        env.update(FERRY_RUNTIME="sim", FERRY_HEARTBEAT_S="5", FERRY_NODE_TTL_S="30")
    cluster = LocalCluster(base, env)
    try:
        cluster.start_coordinator()
        for n in NODES:
            cluster.start_node(n)
        cluster.wait_ready(NODES)
        yield cluster.client
    finally:
        try:
            kill_all(cluster.client)
        finally:
            cluster.stop()
            stop_embedded(base)
            shutil.rmtree(base, ignore_errors=True)


@contextmanager
def real_cluster(testbed: bool, wait_s: float) -> Iterator[tuple[Ferry, str]]:
    """Real CRIU nodes: over the testbed when asked and free, else on loopback."""
    if testbed:
        from tests.e2e.netcluster import NetCluster, wait_subnet_free

        holder = wait_subnet_free(wait_s)
        if holder is None:
            base = Path(tempfile.mkdtemp(prefix="ferry-bench-evac-tb-"))
            cluster = NetCluster(base, nodes=3, rate="1gbit")
            try:
                cluster.up()
                yield cluster.client, "1gbit"
            finally:
                cluster.down()
                shutil.rmtree(base, ignore_errors=True)
            return
        print(f"the testbed subnet is busy (on {holder}): running on loopback", file=sys.stderr)
    with local_cluster(sim=False) as client:
        yield client, "loopback"


def kill_all(client: Ferry) -> None:
    for c in client.containers():
        if c["state"] != "exited":
            client.kill(c["name"])
    for n in client.nodes():
        client.uncordon(n.name)


def start(client: Ferry, kind: str, sizes: list[int], tag: str) -> list[str]:
    """Containers of ``sizes`` MiB on node1, registered with their memory; their names."""
    names = [f"{tag}-{i:03d}" for i in range(len(sizes))]
    for name, mib in zip(names, sizes, strict=True):
        if kind == "sim":
            for _ in range(5):  # SIM_RACE
                try:
                    client.run("node1", ["sim"], name=name, labels={"sim.memory": str(mib << 20)})
                    break
                except BadRequest:
                    if any(c["name"] == name for c in client.containers()):
                        break
        else:
            client.run("node1", [sys.executable, "-u", "-c", HOLDER, str(mib)], name=name)
    end = time.monotonic() + 60
    while time.monotonic() < end:  # real memory is RSS, refreshed by the node's heartbeat
        mem = {c["name"]: c["memory_bytes"] for c in client.containers()}
        if all(mem.get(n, 0) >= mib << 20 for n, mib in zip(names, sizes, strict=True)):
            return names
        time.sleep(0.2)
    raise TimeoutError("the containers' memory did not show in the registry in 60 s")


def run_kind(
    client: Ferry,
    kind: str,
    link: str,
    sizes: list[int],
    levels: list[int],
    strategy: str,
    deadline: float,
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    link_bps = TESTBED_BPS if link == "1gbit" else None
    expect = 0.0
    for c in levels:
        base = {
            "kind": kind,
            "link": link,
            "strategy": strategy,
            "containers": len(sizes),
            "mib_total": sum(sizes),
            "concurrency": c,
        }
        left = deadline - time.monotonic()
        if expect + SETUP_S[kind] > left:
            rows.append(
                {
                    **base,
                    "state": "skipped",
                    "why": f"time budget: ~{expect + SETUP_S[kind]:.0f} s needed, "
                    f"{left:.0f} s left",
                }
            )
            continue
        start(client, kind, sizes, f"{kind[0]}{c}")
        h = client.evacuate("node1", to=NODES[1:], max_parallel=c, per_node=c, strategy=strategy)
        rep = h.wait(timeout=max(left, 60))
        rec = h.record()
        moved = [r for r in rep["containers"] if r["outcome"] == "moved"]
        if kind == "real" and link_bps is None:  # loopback: the c=1 cell measures the link
            link_bps = measured_bps(client, moved)
        downs = [r["downtime_ms"] for r in moved if r["downtime_ms"] is not None]
        row = {
            **base,
            "state": "ok",
            "evacuation": rep["id"],
            "makespan_s": rep["makespan_s"],
            "moves_per_s": round(len(moved) / rep["makespan_s"], 2),
            "outcomes": {k: v for k, v in rep["counts"].items() if v},
            "downtime_ms_mean": round(statistics.mean(downs), 1) if downs else None,
            "downtime_ms_max": max(downs) if downs else None,
            "bytes_sent": sum(r["bytes"] for r in moved),
        }
        if kind == "real" and link_bps:
            bound = bound_s(plan_from_json(rec["plan"]), link_bps, {r["container"] for r in moved})
            row.update(
                lower_bound_s=round(bound, 3),
                link_bps=round(link_bps),
                ratio=round(rep["makespan_s"] / bound, 3) if bound else None,
                link_source="1gbit tbf"
                if link == "1gbit"
                else "loopback: data-plane throughput measured at c=1",
            )
        rows.append(row)
        print(f"{kind} c={c}: {rep['message']}", file=sys.stderr)
        expect = rep["makespan_s"]  # more concurrency should not take longer
        kill_all(client)
    return rows


def measured_bps(client: Ferry, moved: list[dict[str, Any]]) -> float | None:
    """The data plane's throughput over this run's transfers: bytes over wire time."""
    sent = wire = 0.0
    for r in moved:
        t = client.status(r["migration"]).results.get("transfer", {})
        sent, wire = sent + t.get("bytes", 0), wire + t.get("wall_ms", 0) / 1000
    return sent / wire if wire > 0 else None


def print_table(rows: list[dict[str, Any]]) -> None:
    head = (
        f"{'kind':<5} {'link':<9} {'strategy':<8} {'n':>4} {'c':>2} {'makespan':>9} "
        f"{'bound':>7} {'ratio':>6} {'moves/s':>7} {'down mean':>9} {'worst':>7}  outcomes"
    )
    print(head)
    for r in rows:
        if r["state"] != "ok":
            print(
                f"{r['kind']:<5} {r['link']:<9} {r['strategy']:<8} {r['containers']:>4} "
                f"{r['concurrency']:>2}  skipped: {r['why']}"
            )
            continue
        bound = f"{r['lower_bound_s']:.2f}" if "lower_bound_s" in r else "-"
        ratio = f"{r['ratio']:.2f}" if r.get("ratio") else "-"
        mean = f"{r['downtime_ms_mean']:.0f} ms" if r["downtime_ms_mean"] is not None else "-"
        worst = f"{r['downtime_ms_max']:.0f} ms" if r["downtime_ms_max"] is not None else "-"
        print(
            f"{r['kind']:<5} {r['link']:<9} {r['strategy']:<8} {r['containers']:>4} "
            f"{r['concurrency']:>2} {r['makespan_s']:>8.2f}s {bound:>7} {ratio:>6} "
            f"{r['moves_per_s']:>7.2f} {mean:>9} {worst:>7}  {r['outcomes']}"
        )


def write_json(path: Path, rows: list[dict[str, Any]], command: str) -> None:
    """Rows of this run replace those of the same kind, link and strategy; the rest stay."""

    def key(r: dict[str, Any]) -> tuple[str, str, str]:
        return r["kind"], r["link"], r["strategy"]

    prev: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    new = {key(r) for r in rows}
    old = [r for r in prev.get("rows", []) if key(r) not in new]
    out = {
        **prev,
        "benchmark": "evacuate",
        "generated": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "kernel": platform.release(),
            "python": platform.python_version(),
            "load1": os.getloadavg()[0],
        },
        "command": command,
        "units": {
            "makespan_s": "s",
            "lower_bound_s": "s",
            "downtime_ms_*": "ms",
            "link_bps": "bytes/s",
            "mib_total": "MiB of container memory",
        },
        "rows": old + rows,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
