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
first, its ``--baseline-rounds``, for a before/after in one run.

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
import datetime
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import costs
from benchmarks.machine import machine
from benchmarks.svgplot import Series, line_chart
from tasks.api.client import Ferry
from tasks.api.localcluster import LocalCluster
from tasks.config.broker import stop_embedded
from tasks.core.bound import lower_bound
from tasks.core.codec import decode
from tasks.core.evacplan import legs_of, parse_rate
from tasks.core.planner import ORDERS, Plan
from workers.procs import tree

KINDS = (
    ("migration records", "ferry:mig:", ""),
    ("event streams", "ferry:mig:", ":events"),
    ("task results", "celery-task-meta-", ""),
    ("evacuations", "ferry:evac:", ""),
    ("node records", "ferry:node", ""),
)


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
    rows: list[dict[str, Any]] = []
    codes = [(f"baseline {args.baseline}", Path(args.baseline))] if args.baseline else []
    for code, root in [*codes, ("this tree", ROOT)]:
        got, (up_s, start_s, idle) = one_cluster(
            args, link, levels if root == ROOT else before, root
        )
        rows += [{"code": code, **r} for r in got]
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
    args: argparse.Namespace, link: float, levels: list[Round], root: Path
) -> tuple[list[dict[str, Any]], tuple[float, float, dict[str, float]]]:
    """A fresh cluster running the checkout at ``root``, drained once per level: its rows,
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
    cluster = LocalCluster(base, env, root=root)
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


class Sampler(threading.Thread):
    """Every 0.5 s: Redis memory and every cluster process's RSS, by role."""

    def __init__(self, cluster: LocalCluster, client: Ferry) -> None:
        super().__init__(daemon=True)
        self.cluster, self.r, self.samples = cluster, client.store.r, []  # type: ignore[var-annotated]
        self.stop = threading.Event()

    def run(self) -> None:
        t0 = time.monotonic()
        while not self.stop.wait(0.5):
            rss = roles(self.cluster)
            self.samples.append(
                {
                    "t": round(time.monotonic() - t0, 2),
                    "redis_used": int(self.r.info("memory")["used_memory"]),
                    "rss": {k: sum(v) for k, v in rss.items()},
                }
            )


def roles(cluster: LocalCluster) -> dict[str, list[int]]:
    """RSS (bytes) of each cluster process, grouped: coordinator, supervisor, celery worker."""
    out: dict[str, list[int]] = {"coordinator": [], "supervisor": [], "celery worker": []}
    for key, proc in list(cluster.procs.items()):
        for pid in tree(proc.pid):
            role = (
                "coordinator"
                if key == "coordinator"
                else "supervisor"
                if pid == proc.pid
                else "celery worker"
            )
            out[role].append(_status(pid, "VmRSS") * 1024)
    return out


def _status(pid: int, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def cpu_s(cluster: LocalCluster) -> dict[str, float]:
    """CPU seconds used so far by the coordinator and by the nodes' processes."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {"coordinator": 0.0, "nodes": 0.0}
    for key, proc in list(cluster.procs.items()):
        for pid in tree(proc.pid):
            try:
                f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            out["coordinator" if key == "coordinator" else "nodes"] += (
                int(f[11]) + int(f[12])
            ) / tick
    return out


def redis_cpu(client: Ferry) -> float:
    info = client.store.r.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


def cpu_all(cluster: LocalCluster, client: Ferry) -> dict[str, float]:
    return {**cpu_s(cluster), "redis": redis_cpu(client)}


def idle_cpu(cluster: LocalCluster, client: Ferry, seconds: float = 10.0) -> dict[str, float]:
    """CPU per second the idle cluster uses (heartbeats, inventories, Celery's own polling)."""
    before = cpu_all(cluster, client)
    time.sleep(seconds)
    after = cpu_all(cluster, client)
    return {k: round((after[k] - before[k]) / seconds, 4) for k in before}


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


def headline(run: dict[str, Any]) -> str:
    return (
        f"SIMULATED: {run['nodes']} sim nodes, {run['containers']} containers of {run['mib']} MiB, "
        f"{run['link']} links, strategy {run['strategy']}; nodes up in {run['nodes_up_s']} s, "
        f"{run['containers_started_per_s']} containers started per s; idle, the cluster used "
        + ", ".join(f"{k} {v}" for k, v in run["idle_cpu_per_s"].items())
        + " CPU s per s; load "
        f"{run['load1_before_after'][0]} before, {run['load1_before_after'][1]} after "
        f"({run['run_s']} s in all)"
    )


def lines() -> list[tuple[str, Callable[[dict[str, Any]], str]]]:
    """The table's rows: a label and how a round's row shows in it."""
    return [
        (
            "drained at once",
            lambda r: f"{len(r['drained'])} ({r['drained'][0]}..{r['drained'][-1]})",
        ),
        (
            "per node / per evacuation, order",
            lambda r: (
                f"{r['per_node']} / {r['max_parallel']}, {r.get('order', 'small-first')}, "
                f"{r.get('link_model', 'capped')}"
            ),
        ),
        ("moved", lambda r: f"{r['moved']} {r['outcomes']}"),
        (
            "MB of memory moved / sent (all passes)",
            lambda r: f"{r['memory_moved'] / 1e6:.0f} / {r['bytes_moved'] / 1e6:.0f}",
        ),
        ("strategies", lambda r: f"{r['strategies']}"),
        ("planned per s (evacuate calls)", lambda r: f"{r['planned_per_s']}"),
        ("driven per s (done / makespan)", lambda r: f"{r['driven_per_s']}"),
        ("coordinator capacity per s (1/CPU)", lambda r: f"{r['coordinator_capacity_per_s']}"),
        (
            "makespan / lower bound",
            lambda r: f"{r['makespan_s']} / {r['lower_bound_s']} s = {r['ratio']}",
        ),
        ("rounds per drained node (moves / per node)", lambda r: f"{r['rounds_per_drained_node']}"),
        *[
            (f"  {k} ms, median", lambda r, k=k: f"{r['costs_ms_median'][k]}")
            for k in (*costs.PARTS, "record writes")
        ],
        (
            "downtime / migration, medians",
            lambda r: f"{r['downtime_ms_median']} ms / {r['migration_s_median']} s",
        ),
        (
            "CPU s per migration (net of idle)",
            lambda r: " ".join(f"{k[:5]} {v}" for k, v in r["cpu_s_per_migration"].items()),
        ),
        ("Redis bytes per migration (keys)", lambda r: f"{r['redis_bytes_per_migration']}"),
        ("  used_memory delta per migration", lambda r: f"{r['redis_used_delta_per_migration']}"),
        *[
            (f"  of which {k}", lambda r, k=k: f"{r['redis_key_bytes_per_migration'][k]}")
            for k, _, _ in KINDS
        ],
        (
            "events per migration mean (min-max)",
            lambda r: "{mean} ({min}-{max})".format(**r["events_per_migration"]),
        ),
        *[
            (
                f"RSS MiB per {k} mean (max)",
                lambda r, k=k: "{mean} ({max}) x{count}".format(**r["rss_mib_per_process"][k]),
            )
            for k in ("coordinator", "supervisor", "celery worker")
        ],
        ("RSS MiB, every process, peak", lambda r: f"{r['rss_mib_total_peak']}"),
        ("every container once, off the drained", lambda r: f"{r['exactly_once']}"),
        ("load1 before, after", lambda r: f"{r['load1_before_after']}"),
    ]


def print_table(run: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    print(headline(run))
    for label, cell in lines():
        print(f"{label:<40} " + " | ".join(f"{cell(r):<36}" for r in rows))


def markdown(doc: dict[str, Any]) -> str:
    """The saved run as a markdown table, one column per round."""
    rows = doc["rows"]
    out = [
        f"{headline(doc['run'])}; measured {doc['generated']}.",
        "",
        "| | " + " | ".join(f"round {i + 1}" for i in range(len(rows))) + " |",
        "|---|" + "---|" * len(rows),
    ]
    out += [
        f"| {label.strip()} | " + " | ".join(cell(r).replace("|", "/") for r in rows) + " |"
        for label, cell in lines()
    ]
    return "\n".join(out)


def write(
    path: Path, png: Path, run: dict[str, Any], rows: list[dict[str, Any]], command: str
) -> None:
    out = {
        "benchmark": "scale",
        "simulated": "true: the sim runtime (docs/sim.md), never real CRIU",
        "generated": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {**machine(), "load1": os.getloadavg()[0]},
        "command": command,
        "units": {"*_s": "s", "*_bps": "bytes/s", "redis_*": "bytes", "rss_*": "MiB"},
        "run": run,
        "rows": rows,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {path}", file=sys.stderr)
    plot(png, run, rows)


def concurrency_svg(path: Path, run: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    """Makespan against moves at once per node, per code run, beside each round's bound."""

    def key(r: dict[str, Any]) -> tuple[str, str, str]:
        return r.get("code", "this tree"), r.get("order", "small-first"), r.get("link_model", "")

    series = []
    for i, (code, order, model) in enumerate(dict.fromkeys(key(r) for r in rows)):
        mine = [r for r in rows if key(r) == (code, order, model)]
        label = f"{code.split('/')[-1]}, {order}, {model}"
        series.append(Series(label, [(r["per_node"], r["makespan_s"]) for r in mine], False, i))
        series.append(
            Series(
                "  its lower bound", [(r["per_node"], r["lower_bound_s"]) for r in mine], True, i
            )
        )
    drained = len(rows[0]["drained"])
    title = (
        f"SIMULATED: {drained} of {run['nodes']} nodes drained at once, "
        f"{run['containers']} containers, {run['link']} links"
    )
    svg = line_chart(title, "moves at once per node (per evacuation: twice that)", "s", series)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(svg)
    print(f"wrote {path}", file=sys.stderr)


def plot(png: Path, run: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing (the bench extra): no plot", file=sys.stderr)
        return
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for r in rows:
        done = r["timeline"]["done_s"]
        line = a.step(
            done,
            range(1, len(done) + 1),
            where="post",
            label=f"per node {r['per_node']}: {r['makespan_s']:.1f} s",
        )[0]
        a.axvline(
            r["lower_bound_s"],
            color=line.get_color(),
            linestyle="--",
            label=f"lower bound {r['lower_bound_s']:.1f} s",
        )
    a.set(
        xlabel="s since the evacuations started",
        ylabel="migrations done",
        title=f"SIMULATED: {len(rows[0]['drained'])} of {run['nodes']} nodes drained at once, "
        f"{run['link']} links",
    )
    a.legend(fontsize="small")
    s = rows[0]["timeline"]["samples"]
    t = [x["t"] for x in s]
    b.plot(t, [x["redis_used"] / 2**20 for x in s], label="Redis used_memory")
    for k in ("celery worker", "supervisor", "coordinator"):
        b.plot(t, [x["rss"][k] / 2**20 for x in s], label=f"RSS, all {k} processes")
    b.set(
        xlabel=f"s (per node {rows[0]['per_node']})",
        ylabel="MiB",
        yscale="log",
        title="memory during the first round",
    )
    b.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(png, dpi=90)
    print(f"wrote {png}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
