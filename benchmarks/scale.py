"""Scale on the sim runtime: many nodes, many containers, several nodes drained at once.

    .venv/bin/python benchmarks/scale.py        # 32 nodes, 500 containers, 4 drained at once, twice
        [--nodes 32] [--containers 500] [--drain 4] [--mib 8,16,32] [--link 1gbit]
        [--strategy auto] [--rounds 2/small-first/uplink,4/small-first/uplink]
        [--baseline DIR] [--baseline-rounds 2/small-first/capped,4/small-first/capped]
        [--json docs/benchmarks/scale.json] [--png docs/benchmarks/scale.png]
        [--svg docs/benchmarks/scale-concurrency.svg]
    .venv/bin/python benchmarks/scale.py --markdown   # the table of docs/BENCHMARKS.md, from the JSON

SIMULATED: every node is a full ``ferry worker`` (its supervisor with the data
plane and heartbeat, and its two Celery workers, ``main`` and ``urgent``) with
the sim runtime (docs/sim.md), one coordinator, and an embedded Redis of the
run's own, all on this machine. Containers of ``--mib`` sizes (in turn) are
started round-robin on every node through the queue; then, for each round
``PER_NODE/ORDER/MODEL`` of ``--rounds`` in turn, ``--drain`` more nodes are
evacuated at once, each to the nodes never drained, with ``per_node`` moves
at once into or out of a node, ``max_parallel = 2 * per_node`` per
evacuation, in the planner's run ``ORDER``. The data plane's own throttle
models each node's ``--link``: ``uplink`` gives every node that budget,
shared by all its transfers, a frozen container's first
(``FERRY_UPLINK_BPS``); ``capped`` caps each migration at ``link / per_node``
instead (a drained node sends at most ``per_node`` at once; a checkout
without the uplink has only this). The bytes are real (each sim memory
crosses the data plane); dumps and restores sleep for the model's times.
``--baseline DIR`` runs another ferry checkout (say ``git archive main``)
first, its ``--baseline-rounds``, for a before/after in one run: that
checkout's own ``benchmarks/scale.py``, so its client (``evacuate``) is its
own too and speaks to its coordinator as that version does.

Measured: the coordinator's throughput (containers planned per second of
``evacuate`` calls; migrations driven to done per second of makespan; the
coordinator's, workers' and Redis's CPU per migration), Redis memory per
migration (MEMORY USAGE of every key, by kind, before and after; INFO
used_memory's change too, which allocator reuse and client buffers make
noisy), the workers' resident memory (per process, sampled), events per
migration (the length of each migration's stream), and the makespan against
its lower bound (tasks.core.bound over every move of every drained node:
the links' measured rates where faster than ``--link``, the freezes the
migrations measured), with each migration's fixed costs by part
(benchmarks/costs.py). Every container is checked to run exactly
once afterwards, off the drained nodes.
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
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import costs
from benchmarks.scaleprobe import Sampler, cpu_all, idle_cpu, roles
from benchmarks.scaleview import KINDS, concurrency_svg, markdown, print_table, write
from tasks.api.client import Ferry
from tasks.api.localcluster import LocalCluster
from tasks.config.broker import stop_embedded
from tasks.core.bound import lower_bound
from tasks.core.codec import decode
from tasks.core.evacplan import legs_of, parse_rate
from tasks.core.planner import ORDERS, Plan


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="benchmarks/scale.py", description=__doc__.split("\n")[0])
    ap.add_argument("--nodes", type=int, default=32)
    ap.add_argument("--containers", type=int, default=500)
    ap.add_argument("--drain", type=int, default=4, help="nodes evacuated at once")
    ap.add_argument("--mib", default="8,16,32", help="container memory sizes, used in turn")
    ap.add_argument("--link", default="1gbit", help="each node's link (the bound's rate)")
    ap.add_argument("--strategy", default="auto")
    ap.add_argument(
        "--rounds",
        default="2/small-first/uplink,4/small-first/uplink",
        help="PER_NODE/ORDER/MODEL, one round of draining each",
    )
    ap.add_argument("--baseline-rounds", default="2/small-first/capped,4/small-first/capped")
    ap.add_argument("--timeout", type=float, default=400.0, help="s for the evacuations")
    ap.add_argument("--up-timeout", type=float, default=300.0, help="s for the nodes to come up")
    ap.add_argument("--json", default=str(ROOT / "docs" / "benchmarks" / "scale.json"))
    ap.add_argument("--png", default=str(ROOT / "docs" / "benchmarks" / "scale.png"))
    ap.add_argument("--svg", default=str(ROOT / "docs" / "benchmarks" / "scale-concurrency.svg"))
    ap.add_argument("--markdown", action="store_true", help="print the saved JSON as markdown")
    ap.add_argument(
        "--baseline", default="", help="another ferry checkout to run first, the same way"
    )
    args = ap.parse_args(argv)
    if args.markdown:
        print(markdown(json.loads(Path(args.json).read_text())))
        return 0
    link = parse_rate(args.link)
    levels, before = rounds(args.rounds), rounds(args.baseline_rounds)
    if link is None or args.drain * max(len(levels), len(before)) >= args.nodes:
        raise SystemExit(
            "error: --link must be a rate, and --drain times the levels fewer than --nodes"
        )
    t_run = time.monotonic()
    load_before = os.getloadavg()
    rows = baseline(args) if args.baseline else []
    got, (up_s, start_s, idle) = one_cluster(args, link, levels)
    rows += [{"code": "this tree", **r} for r in got]
    run = {
        "nodes": args.nodes,
        "containers": args.containers,
        "mib": args.mib,
        "link": args.link,
        "link_bps": link,
        "strategy": args.strategy,
        "nodes_up_s": round(up_s, 1),
        "containers_started_per_s": round(args.containers / start_s, 1),
        "idle_cpu_per_s": idle,
        "run_s": round(time.monotonic() - t_run, 1),
        "load1_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
    }
    print_table(run, rows)
    write(
        Path(args.json), Path(args.png), run, rows, " ".join(["benchmarks/scale.py", *sys.argv[1:]])
    )
    concurrency_svg(Path(args.svg), run, rows)
    return 0 if all(r["exactly_once"] for r in rows) else 1


def baseline(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The rows of ``--baseline``'s checkout, run by its own benchmarks/scale.py."""
    root = Path(args.baseline).resolve()
    out = Path(tempfile.mkdtemp(prefix="ferry-bench-baseline-"))
    same = ["--nodes", args.nodes, "--containers", args.containers, "--drain", args.drain]
    same += ["--mib", args.mib, "--link", args.link, "--strategy", args.strategy]
    same += ["--timeout", args.timeout, "--up-timeout", args.up_timeout]
    files = ["--json", out / "scale.json", "--png", out / "scale.png", "--svg", out / "c.svg"]
    argv = [*same, "--rounds", args.baseline_rounds, *files]
    try:
        subprocess.run(
            [sys.executable, str(root / "benchmarks" / "scale.py"), *map(str, argv)],
            cwd=root,
            check=False,  # a run whose containers did not all end once still has its rows
        )
        got = json.loads((out / "scale.json").read_text())["rows"]
    finally:
        shutil.rmtree(out, ignore_errors=True)
    return [{**r, "code": f"baseline {args.baseline}"} for r in got]


Round = tuple[int, str, str]  # moves at once per node, run order, link model


def rounds(spec: str) -> list[Round]:
    """``2/small-first/uplink,4/...`` as rounds; SystemExit on a bad one."""
    out = []
    for part in spec.split(","):
        try:
            n, order, model = part.split("/")
            out.append((int(n), order, model))
        except ValueError:
            raise SystemExit(f"error: bad round {part!r}: want PER_NODE/ORDER/MODEL") from None
        if model not in ("uplink", "capped") or order not in ORDERS:
            raise SystemExit(f"error: bad round {part!r}: MODEL is uplink or capped")
    return out


def one_cluster(
    args: argparse.Namespace, link: float, levels: list[Round]
) -> tuple[list[dict[str, Any]], tuple[float, float, dict[str, float]]]:
    """A fresh cluster running this checkout, drained once per level: its rows,
    and how long its nodes took to come up, its containers to start, its idle CPU."""
    rows: list[dict[str, Any]] = []
    base = Path(tempfile.mkdtemp(prefix="ferry-bench-scale-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("FERRY_")}
    # a heartbeat every 2 s keeps 32 supervisors' inventory writes off the control plane's back
    env.update(
        FERRY_RUNTIME="sim", FERRY_HEARTBEAT_S="2", FERRY_NODE_TTL_S="30", FERRY_LINK_BPS=str(link)
    )
    if any(model == "uplink" for _, _, model in levels):
        env["FERRY_UPLINK_BPS"] = str(link)  # the capped rounds' caps are below it
    cluster = LocalCluster(base, env, root=ROOT)
    nodes = [f"node{i:02d}" for i in range(1, args.nodes + 1)]
    try:
        t0 = time.monotonic()
        cluster.start_coordinator()
        for n in nodes:
            cluster.start_node(n)
        cluster.wait_ready(nodes, timeout=args.up_timeout)
        up_s = time.monotonic() - t0
        print(f"{args.nodes} nodes up in {up_s:.0f} s", file=sys.stderr)
        client = cluster.client
        sizes = [int(s) for s in args.mib.split(",")]
        start_s = start_containers(client, nodes, args.containers, sizes)
        print(f"{args.containers} containers started in {start_s:.0f} s", file=sys.stderr)
        rest = nodes[args.drain * len(levels) :]  # never drained: every round's destinations
        idle = idle_cpu(cluster, client)
        for i, level in enumerate(levels):
            load = os.getloadavg()[0]
            row = drain(
                cluster,
                client,
                nodes[i * args.drain : (i + 1) * args.drain],
                rest,
                level,
                args,
                link,
                idle,
            )
            rows.append(
                {**row, "load1_before_after": [round(load, 2), round(os.getloadavg()[0], 2)]}
            )
    finally:
        cluster.stop()
        stop_embedded(base)
        shutil.rmtree(base, ignore_errors=True)
    return rows, (up_s, start_s, idle)


def start_containers(client: Ferry, nodes: list[str], n: int, sizes: list[int]) -> float:
    """``n`` sim containers round-robin over ``nodes``, through the queue; the seconds it took."""
    t0 = time.monotonic()

    def one(i: int) -> None:
        client.run(
            nodes[i % len(nodes)],
            ["sim"],
            name=f"c{i:04d}",
            labels={"sim.memory": str(sizes[i % len(sizes)] << 20)},
        )

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(n)))
    took = time.monotonic() - t0
    end = time.monotonic() + 60
    while len(client.containers()) < n:  # the heartbeats publish the inventories
        if time.monotonic() > end:
            raise TimeoutError("the containers did not all show in the registry in 60 s")
        time.sleep(0.5)
    return took


def drain(
    cluster: LocalCluster,
    client: Ferry,
    drained: list[str],
    rest: list[str],
    level: Round,
    args: argparse.Namespace,
    link: float,
    idle: dict[str, float],
) -> dict[str, Any]:
    """Evacuate ``drained`` at once to ``rest``; everything measured about it.

    CPU per migration is net of what the idle cluster used over the makespan.
    """
    per_node, order, model = level
    cap = link / per_node if model == "capped" else None
    r = client.store.r
    before_mem, before_keys = int(r.info("memory")["used_memory"]), key_memory(client)
    cpu0 = cpu_all(cluster, client)
    sampler = Sampler(cluster, client)
    sampler.start()
    t0, wall0 = time.monotonic(), time.time()
    handles, plan_s = [], []
    for n in drained:
        t = time.monotonic()
        handles.append(
            client.evacuate(
                n,
                to=rest,
                max_parallel=2 * per_node,
                per_node=per_node,
                bandwidth=cap,
                strategy=args.strategy,
                order=order,
            )
        )
        plan_s.append(time.monotonic() - t)
    reports = [h.wait(timeout=args.timeout) for h in handles]
    makespan = time.monotonic() - t0
    sampler.stop.set()
    sampler.join()
    cpu1 = cpu_all(cluster, client)
    after_mem = int(r.info("memory")["used_memory"])
    recs = [h.record() for h in handles]
    moved = [row for rep in reports for row in rep["containers"] if row["outcome"] == "moved"]
    mids = [row["migration"] for row in moved]
    plans = [decode(Plan, rec["plan"]) for rec in recs]
    every = [m for p in plans for m in p.moves]
    # over every drained node at once: the links' measured rates, the freezes measured
    b = lower_bound([leg for rec in recs for leg in legs_of(rec)], client.measured_links(), link)
    bound = b.seconds
    records = [client.status(mid) for mid in mids]
    ends = sorted(m.updated - wall0 for m in records)
    events = [int(r.xlen(f"ferry:mig:{mid}:events")) for mid in mids]
    kinds = {k: v - before_keys[k] for k, v in key_memory(client).items()}
    running = Counter(c["name"] for c in client.containers() if c["state"] == "running")
    where = {c["name"]: c["node"] for c in client.containers() if c["state"] == "running"}
    planned = sum(len(p.moves) for p in plans)
    n = max(len(mids), 1)
    rss = roles(cluster)
    peak = {k: max(s["rss"][k] for s in sampler.samples) for k in rss} if sampler.samples else {}
    cpu = {k: max(cpu1[k] - cpu0[k] - idle[k] * makespan, 0.0) / n for k in cpu0}
    return {
        "drained": drained,
        "per_node": per_node,
        "order": order,
        "link_model": model,
        "max_parallel": 2 * per_node,
        "bandwidth_per_migration_bps": cap,
        "planned": planned,
        "plan_s": [round(s, 3) for s in plan_s],
        "planned_per_s": round(planned / sum(plan_s), 1),
        "moved": len(mids),
        "outcomes": dict(Counter(row["outcome"] for rep in reports for row in rep["containers"])),
        "strategies": dict(Counter(row["strategy"] for row in moved)),
        "makespan_s": round(makespan, 2),
        "lower_bound_s": round(bound, 2),
        "bound_by": b.by,
        "rounds_per_drained_node": -(-planned // (len(drained) * per_node)),
        "costs_ms_median": costs.of_run(client, recs),
        "ratio": round(makespan / bound, 2) if bound else None,
        "driven_per_s": round(len(mids) / makespan, 2),
        "downtime_ms_median": _median([row["downtime_ms"] for row in moved]),
        "migration_s_median": _median([row["total_s"] for row in moved]),
        "bytes_moved": sum(
            m.results.get("transfer", {}).get("bytes", 0)  # the final images
            + sum(p.get("bytes_sent", 0) for p in m.passes)
            for m in records
        ),
        "memory_moved": sum(m.memory_bytes for m in every),
        "coordinator_capacity_per_s": round(1 / cpu["coordinator"], 1)
        if cpu["coordinator"]
        else None,
        "cpu_s_per_migration": {k: round(v, 4) for k, v in cpu.items()},
        "redis_used_before": before_mem,
        "redis_used_after": after_mem,
        "redis_used_peak": max([s["redis_used"] for s in sampler.samples] + [after_mem]),
        "redis_used_delta_per_migration": round((after_mem - before_mem) / n),
        "redis_bytes_per_migration": round(sum(kinds.values()) / n),
        "redis_key_bytes_per_migration": {k: round(v / n) for k, v in kinds.items()},
        "events_per_migration": {
            "mean": round(statistics.mean(events), 1) if events else None,
            "min": min(events, default=None),
            "max": max(events, default=None),
        },
        "rss_mib_per_process": {
            k: {
                "mean": round(statistics.mean(v) / 2**20, 1),
                "max": round(max(v) / 2**20, 1),
                "count": len(v),
            }
            for k, v in rss.items()
            if v
        },
        "rss_mib_total_peak": round(sum(peak.values()) / 2**20, 1),
        "exactly_once": all(v == 1 for v in running.values())
        and len(running) == args.containers
        and not any(node in drained for node in where.values()),
        "timeline": {
            "done_s": [round(e, 2) for e in ends],
            "samples": sampler.samples[:: max(1, len(sampler.samples) // 200)],
        },
    }


def key_memory(client: Ferry) -> dict[str, int]:
    """Bytes of the migration-related keys, by kind (MEMORY USAGE of each)."""
    r = client.store.r
    out = {k: 0 for k, _, _ in KINDS}
    for key in r.scan_iter(count=1000):
        key = key.decode() if isinstance(key, bytes) else str(key)
        for kind, prefix, suffix in KINDS:
            if (
                key.startswith(prefix)
                and key.endswith(suffix)
                and (suffix or not key.endswith(":events"))
            ):
                out[kind] += int(r.memory_usage(key, samples=0) or 0)
                break
    return out


def _median(xs: list[Any]) -> float | None:
    vals = [x for x in xs if x is not None]
    return round(statistics.median(vals), 1) if vals else None


if __name__ == "__main__":
    sys.exit(main())
