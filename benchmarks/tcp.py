"""A service's TCP connection across moves: what the client saw beside the pause ferry reported.

    sudo .venv/bin/python benchmarks/tcp.py [--strategies cold,delta,precopy,postcopy] [--sizes 16,256]
        [--runs 3] [--rate 1gbit] [--json docs/benchmarks/tcp.json]

On the netns testbed (2 nodes, each link shaped to ``--rate``, each node's
eth0 a port of its bridge ``br0``), an echo server holding SIZE MiB runs in a
container with its own address (``--net 10.77.0.50/24``); a client on the host
holds ONE connection and sends a numbered line every 10 ms, waiting for each
answer. The container moves node1 <-> node2 ``--runs`` times per strategy and
size. Per move: ferry's reported downtime (the container's longest pause), the
client's longest wait for an answer during the move (its stall), whether the
connection broke and whether every answer came back once and in order. The
baseline is the client's longest wait over a quiet stretch of the same run
with no move. Each row: medians of the runs; "stall/pause" is the median of
the per-move ratios. ``--redis`` (on by default) adds the Redis case of
``benchmarks/tcpredis.py``: redis-benchmark against a Redis that moves under it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import tcpredis
from benchmarks.machine import machine
from tasks.core.pauses import longest
from tests.e2e.netcluster import NetCluster, wait_subnet_free
from tests.integration.helpers import wait_for
from tests.tcpecho import SERVER, EchoClient

ADDRESS = "10.77.0.50"
QUIET_S = 5.0


def connect() -> EchoClient | None:
    try:
        return EchoClient(ADDRESS)
    except OSError:
        return None


def one_size(
    cluster: NetCluster, size: int, strategies: list[str], runs: int
) -> list[dict[str, Any]]:
    ferry = cluster.client
    ferry.run("node1", [sys.executable, "-c", SERVER, str(size)], name="echo", net=f"{ADDRESS}/24")
    client = wait_for(connect, timeout=30).start()
    rows: list[dict[str, Any]] = []
    try:
        wait_for(lambda: client.answered() > 100, timeout=30)
        quiet = time.time()
        time.sleep(QUIET_S)
        baseline = client.seen.longest_between(quiet, time.time()) * 1000
        here = "node1"
        for strategy in strategies:
            moves = []
            for _ in range(runs):
                to = "node2" if here == "node1" else "node1"
                started = time.time()
                m = ferry.migrate("echo", to, strategy=strategy).wait(timeout=300)
                if m.state.value != "done":
                    raise SystemExit(f"error: {strategy} move failed: {m.errors}")
                here = to
                seen = client.answered()
                wait_for(lambda s=seen: client.answered() > s + 100, timeout=60)  # type: ignore[misc]
                pause = longest(m.pauses)
                moves.append(
                    {
                        "pause_ms": pause.ms if pause else 0.0,
                        "stall_ms": client.seen.longest_between(started, time.time()) * 1000,
                        "total_s": time.time() - started,
                    }
                )
            rows.append(row(size, strategy, moves, baseline, client))
            print(line(rows[-1]), flush=True)
    finally:
        got = client.stop()
        ferry.kill("echo")
    broken = got.error or ("" if got.in_order else "an answer was lost, repeated or reordered")
    for r in rows:
        r["connection"] = broken or "kept"
    return rows


def row(
    size: int, strategy: str, moves: list[dict[str, Any]], baseline: float, c: EchoClient
) -> dict[str, Any]:
    med = {k: statistics.median(m[k] for m in moves) for k in ("pause_ms", "stall_ms", "total_s")}
    ratios = [m["stall_ms"] / m["pause_ms"] for m in moves if m["pause_ms"] > 0]
    return {
        "size_mb": size,
        "strategy": strategy,
        "runs": len(moves),
        "baseline_ms": round(baseline, 1),
        "pause_ms": round(med["pause_ms"], 1),
        "stall_ms": round(med["stall_ms"], 1),
        "stall_over_pause": round(statistics.median(ratios), 2) if ratios else None,
        "worst_stall_ms": round(max(m["stall_ms"] for m in moves), 1),
        "total_s": round(med["total_s"], 2),
        "answers": len(c.seen.answers),
        "moves": moves,
    }


HEADER = "| MiB | strategy | client baseline | ferry's pause | client stall | stall/pause | worst stall | move | connection |"


def line(r: dict[str, Any]) -> str:
    ratio = "-" if r["stall_over_pause"] is None else f"{r['stall_over_pause']:.2f}x"
    return (
        f"| {r['size_mb']} | {r['strategy']} | {r['baseline_ms']:.1f} ms | {r['pause_ms']:.0f} ms "
        f"| {r['stall_ms']:.0f} ms | {ratio} | {r['worst_stall_ms']:.0f} ms | {r['total_s']:.1f} s "
        f"| {r.get('connection', '')} |"
    )


def markdown(doc: dict[str, Any]) -> str:
    """The saved run as docs/BENCHMARKS.md's table."""
    out = [HEADER, "|---:|---|---:|---:|---:|---:|---:|---:|---|"]
    out += [line(r) for r in doc["rows"]]
    if doc.get("redis"):
        out += ["", tcpredis.markdown(doc["redis"])]
    m = doc["machine"]
    out.append(
        f"\n{doc['rate']} links, median of {doc['runs']} moves per row; "
        f"{m.get('cpus', '?')} CPUs, kernel {doc['kernel']}, CRIU {doc['criu_bin']}; "
        f"load {doc['load_average_1m']}"
    )
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--strategies", default="cold,delta,precopy,postcopy")
    parser.add_argument("--sizes", default="16,256", help="MiB the server holds")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rate", default="1gbit")
    parser.add_argument("--redis", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--json", type=Path, default=ROOT / "docs/benchmarks/tcp.json")
    parser.add_argument("--markdown", action="store_true", help="print the saved JSON as markdown")
    args = parser.parse_args()
    if args.markdown:
        print(markdown(json.loads(args.json.read_text())))
        return
    if os.geteuid() != 0:
        raise SystemExit("benchmarks/tcp.py needs root (the netns testbed, CRIU)")
    if holder := wait_subnet_free(timeout=300):
        raise SystemExit(f"error: another testbed holds 10.77.0 (on {holder})")
    load = round(os.getloadavg()[0], 2)
    started = time.monotonic()
    print(HEADER, flush=True)
    rows: list[dict[str, Any]] = []
    with (
        tempfile.TemporaryDirectory(prefix="ferry-tcp-") as base,
        NetCluster(Path(base), nodes=2, rate=args.rate, bridge="br0") as cluster,
    ):
        for size in (int(s) for s in args.sizes.split(",")):
            rows += one_size(cluster, size, args.strategies.split(","), args.runs)
        redis = tcpredis.case(cluster) if args.redis and shutil.which("redis-benchmark") else None
        if redis:
            print(tcpredis.markdown(redis), flush=True)
    report = {
        "what": "one TCP connection to a container with its own address, moved node1 <-> node2",
        "rate": args.rate,
        "runs": args.runs,
        "machine": machine(),
        "kernel": os.uname().release,
        "criu_bin": os.environ.get("FERRY_CRIU_BIN", "criu"),  # the workers' (ops/criu patches)
        "load_average_1m": [load, round(os.getloadavg()[0], 2)],  # at start, at end
        "seconds": round(time.monotonic() - started, 1),
        "rows": rows,
        "redis": redis,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.json} in {report['seconds']} s")


if __name__ == "__main__":
    main()
