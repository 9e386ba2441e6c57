"""benchmarks/tcp.py's Redis case: redis-benchmark against a Redis that moves under it.

Debian's redis-server runs in a container with its own address; redis-benchmark
on the host (``-k 1``: its connections kept, never re-opened) runs GETs once
undisturbed (the baseline), then once per move while the container moves
(node1 -> node2 cold, back with postcopy), side by side: whether it finished
(a broken connection ends it), the connections the server accepted during
each run (the same count in all: nobody reconnected), and the p99 and max
latency it reported.
"""

from __future__ import annotations

import csv
import io
import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any

from tasks.core.pauses import longest
from tests.e2e.netcluster import NetCluster
from tests.integration.helpers import wait_for

ADDRESS = "10.77.0.51"
REQUESTS = 150_000
CLIENTS = 4


def _cli(*args: str) -> str:
    done = subprocess.run(
        ["redis-cli", "-h", ADDRESS, *args], capture_output=True, text=True, timeout=10
    )
    return done.stdout.strip()


def _accepted() -> int:
    stats = _cli("info", "stats").splitlines()
    return int(
        next(ln.split(":")[1] for ln in stats if ln.startswith("total_connections_received:"))
    )


def bench(move: Callable[[], None] | None = None) -> dict[str, Any]:
    """One redis-benchmark run of GETs on CLIENTS kept connections; ``move()`` 1 s into it."""
    before = _accepted()
    argv = ["redis-benchmark", "-h", ADDRESS, "-k", "1", "-c", str(CLIENTS), "-n", str(REQUESTS)]
    mover = threading.Timer(1.0, move) if move else None
    started = time.monotonic()
    proc = subprocess.Popen([*argv, "-t", "get", "--csv"], stdout=subprocess.PIPE, text=True)
    if mover:
        mover.start()
    out, _ = proc.communicate(timeout=600)
    if mover:
        mover.join()
    rows = list(csv.DictReader(io.StringIO(out)))
    got = rows[0] if rows else {}
    return {
        "finished": proc.returncode == 0 and bool(got),
        "seconds": round(time.monotonic() - started, 2),
        "accepted": _accepted() - before - 1,  # less our own INFO's
        "rps": float(got.get("rps", 0)),
        "p99_ms": float(got.get("p99_latency_ms", 0)),
        "max_ms": float(got.get("max_latency_ms", 0)),
    }


MOVES = (("node2", "cold"), ("node1", "postcopy"))


def case(cluster: NetCluster) -> dict[str, Any]:
    """redis-benchmark undisturbed, then while the container makes each of MOVES."""
    ferry = cluster.client
    server = ["redis-server", "--bind", "0.0.0.0", "--protected-mode", "no", "--save", ""]
    ferry.run("node1", [*server, "--appendonly", "no"], name="redis", net=f"{ADDRESS}/24")
    try:
        wait_for(lambda: _cli("ping") == "PONG", timeout=30)
        subprocess.run(  # the keys the GETs read
            ["redis-benchmark", "-h", ADDRESS, "-t", "set", "-n", "10000", "-q"],
            capture_output=True,
            check=True,
        )
        baseline = bench()
        moves = []
        for to, strategy in MOVES:
            moved: dict[str, Any] = {"strategy": strategy}

            def move(to: str = to, moved: dict[str, Any] = moved) -> None:
                m = ferry.migrate("redis", to, strategy=moved["strategy"]).wait(timeout=300)
                pause = longest(m.pauses)
                moved.update(state=m.state.value, pause_ms=pause.ms if pause else 0.0)

            during = bench(move)
            moves.append({**moved, "bench": during})
        return {"baseline": baseline, "moves": moves}
    finally:
        ferry.kill("redis")


def markdown(r: dict[str, Any]) -> str:
    """The Redis case as a table."""
    out = [
        "| redis-benchmark GETs, -k 1 | finished | connections accepted | p99 | max | req/s |",
        "|---|---|---:|---:|---:|---:|",
    ]
    runs = [("undisturbed", r["baseline"])]
    runs += [(f"while it moves {m['strategy']}", m["bench"]) for m in r["moves"]]
    for label, b in runs:
        out.append(
            f"| {label} | {'yes' if b['finished'] else 'NO'} | {b['accepted']} "
            f"| {b['p99_ms']:.2f} ms | {b['max_ms']:.0f} ms | {b['rps']:.0f} |"
        )
    said = "; ".join(
        f"{m['strategy']} {m.get('state', '?')}, ferry's pause {m.get('pause_ms', 0):.0f} ms, "
        f"reconnects: {m['bench']['accepted'] - r['baseline']['accepted']}"
        for m in r["moves"]
    )
    out.append(f"\nThe moves: {said}; {REQUESTS} GETs on {CLIENTS} connections per run.")
    return "\n".join(out)
