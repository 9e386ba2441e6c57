"""The fault soak: many rounds, a random fault in a random phase of a random strategy.

    sudo .venv/bin/python -m tests.faults.soak --rounds 40 [--seed 7] [--kinds kill,redis]

Each round migrates a dirtying counter between two real-CRIU nodes while one
fault strikes: a worker killed in a phase (workers.failpoints), Redis
restarted (kill -9, on its append-only file) while a phase runs, the
data-plane connection reset mid-transfer, a corrupted block, the
destination's disk full, a flood of undecodable messages on every node queue
(each must be moved aside, no worker restarted), a captured signed kill of
the container's name replayed to its node mid-migration (refused), a
slowloris on the destination's data-plane listener (the migration finishes,
every trickling connection is cut by the token deadline), the Redis
master killed -9 under a cluster of its own on a master, a replica and three
Sentinels (the replica promoted). Then it checks what tests/faults checks: exactly
one copy runs, its counter went on, no image dir is left, the record is
final with the fault in it. Prints the table at the end; exits 1 unless
lost, duplicated and unfinished are all 0. The cluster runs on a Redis of
its own (tests.faults.cluster.PrivateRedis), never the machine's.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import redis

from tasks.api.demo import criu_usable
from tasks.messaging.app import node_queue
from tests.conftest import running
from tests.faults.cluster import (
    COLD,
    DELTA,
    NODES,
    POSTCOPY,
    REDIS,
    FaultCluster,
    PrivateRedis,
    outcome,
)
from tests.faults.conftest import fault_env
from tests.faults.inject import (
    CAP_BPS,
    EVIDENCE,
    captured_kill,
    cut_when_sending,
    full_disk,
    garbage_flood,
    replay_refused,
    restart_redis_in,
    slowloris_at,
)
from tests.faults.tally import TALLY
from tests.integration.helpers import dirtying, ticks, wait_for
from tests.integration.sentinels import RedisSet
from workers.errors import FerryError

# (kind, strategy, where): every fault the soak draws from
FAULTS = (
    [
        ("kill", s, p)
        for s, points in (("cold", COLD), ("postcopy", POSTCOPY), ("delta", DELTA))
        for p in points
    ]
    + [("redis", s, p) for s, points in REDIS.items() for p in points]
    + [("garbage", s, "node queues") for s in ("cold", "delta", "postcopy")]
    + [("replay", s, "kill") for s in ("cold", "delta")]
    + [("slowloris", s, "data plane") for s in ("cold", "delta", "postcopy")]
    + [("sentinel", s, points[1]) for s, points in REDIS.items()]
    + [
        ("drop", "cold", "transfer"),
        ("drop", "delta", "precopy"),
        ("drop", "cold", "dump"),
        ("corrupt", "cold", "receive"),
        ("corrupt", "delta", "receive"),
        ("disk-full", "cold", "incoming"),
        ("disk-full", "delta", "incoming"),
        ("disk-full", "cold", "streamed"),
    ]
)


def one_round(
    c: FaultCluster,
    rds: PrivateRedis,
    kind: str,
    strategy: str,
    where: str,
    name: str,
    src: str,
    dst: str,
    memory_mb: int,
) -> str:
    """Run one faulted migration of a new container ``name``; its outcome (tests.faults.cluster)."""
    kill = captured_kill(c, src, name) if kind == "replay" else None
    info = c.client.run(src, [sys.executable, "-u", "-c", dirtying(memory_mb)], name=name)
    wait_for(lambda: len(ticks(info["log"])) > 3)
    with ExitStack() as undo:
        if kind in ("kill", "redis", "corrupt"):
            c.arm(where if kind != "corrupt" else "receive:corrupt")
            undo.callback(c.disarm)
        if kind == "disk-full":
            undo.enter_context(full_disk(c, dst))
        if kind == "garbage":
            queues = [node_queue(n, u) for n in NODES for u in (False, True)]
            undo.enter_context(garbage_flood(c.client.store.r, queues))
            workers = {n: c.client.node(n).workers for n in NODES}  # none may restart
            undo.callback(lambda: check_same(workers, {n: c.client.node(n).workers for n in NODES}))
        if kind == "slowloris":
            undo.enter_context(slowloris_at(c, dst))
        # the pages cross in the dump (streamed) or as files
        streamed = {"page_server": "on" if where in ("dump", "streamed") else "off"}
        extra = (
            {"bandwidth_bps": CAP_BPS, **streamed}
            if kind == "drop"
            else streamed
            if kind == "disk-full"
            else {}
        )
        handle = c.client.migrate(name, dst, strategy=strategy, **extra)
        if kind == "redis":
            restart_redis_in(c, rds, handle.id, where)
        elif kind == "drop":
            cut_when_sending(c, handle.id, dst, where)
        elif kill is not None:
            replay_refused(c, src, handle.id, kill)
        handle.wait(timeout=180)
        result = outcome(c, name, info["log"], handle.id, EVIDENCE[kind])
        # nothing failed but the attack: the migration must get through it
        assert kind != "slowloris" or result == "done", c.client.status(handle.id).errors
        return result


def sentinel_round(base: Path, strategy: str, where: str, name: str, memory_mb: int) -> str:
    """A cluster of its own on a master, a replica and three Sentinels
    (tests.integration.sentinels); ``name`` migrates f1 -> f2, held at the pause
    failpoint ``where`` while the master is killed with -9 and the Sentinels
    promote the replica, then let go: it ends with its record, on one node."""
    rs = RedisSet(base / "redis")
    rs.start()
    try:
        env = {
            **fault_env(rs.url, str(base / "failpoints")),
            "FERRY_RESULT_BACKEND": rs.url,
            "FERRY_REDIS_URL": "",
        }
        c = FaultCluster(base, env)
        c.disarm()
        with running(c, list(NODES)):
            info = c.client.run("f1", [sys.executable, "-u", "-c", dirtying(memory_mb)], name=name)
            wait_for(lambda: len(ticks(info["log"])) > 3)
            c.arm(where)
            mid = c.client.migrate(name, "f2", strategy=strategy).id
            wait_for(lambda: c.held(mid, where), timeout=90)
            rs.kill("master")
            wait_for(lambda: rs.master_port() == rs.ports["replica"], timeout=60)
            c.disarm()
            c.release(mid, where)
            wait_for(lambda: final(c, mid), timeout=180, every=0.5)
            return outcome(c, name, info["log"], mid, EVIDENCE["sentinel"])
    finally:
        rs.stop()


def final(c: FaultCluster, mid: str) -> bool:
    """Whether ``mid``'s record is final; False while the state store fails over."""
    try:
        return c.client.status(mid).state.final
    except (redis.RedisError, FerryError):
        return False


def check_same(before: dict[str, dict[str, float]], after: dict[str, dict[str, float]]) -> None:
    assert before == after, f"a worker restarted during the flood: {before} -> {after}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--seed", type=int, default=int(time.time()))
    ap.add_argument(
        "--kinds",
        default=",".join(sorted({k for k, _, _ in FAULTS})),
        help="comma-separated fault kinds to draw from (default: all)",
    )
    ap.add_argument("--out", type=Path, default=Path("docs/benchmarks/soak.json"))
    args = ap.parse_args()
    ok, why = criu_usable()
    if not ok:
        print(f"soak: {why}", file=sys.stderr)
        return 2
    kinds = set(args.kinds.split(","))
    unknown = kinds - {k for k, _, _ in FAULTS}
    if unknown or (os.geteuid() != 0 and kinds & {"drop", "disk-full"}):
        print(
            f"soak: unknown kinds {sorted(unknown)}"
            if unknown
            else "soak: drop and disk-full need root (ss -K, mount)",
            file=sys.stderr,
        )
        return 2
    plan = [f for f in FAULTS if f[0] in kinds]
    rng = random.Random(args.seed)
    base = Path(tempfile.mkdtemp(prefix="ferry-soak-"))
    rds = PrivateRedis(base / "redis")
    rds.start()
    c = FaultCluster(base, fault_env(rds.url, str(base / "failpoints")))
    c.disarm()
    rounds, failures = [], 0
    started = time.monotonic()
    try:
        with running(c, list(NODES)):
            for i in range(args.rounds):
                kind, strategy, where = rng.choice(plan)
                src, dst = ("f1", "f2") if i % 2 == 0 else ("f2", "f1")
                name = f"soak-{i}"
                t0 = time.monotonic()
                memory_mb = rng.choice([8, 32])
                try:
                    result = (
                        sentinel_round(base / f"sentinel-{i}", strategy, where, name, memory_mb)
                        if kind == "sentinel"
                        else one_round(c, rds, kind, strategy, where, name, src, dst, memory_mb)
                    )
                except (AssertionError, TimeoutError) as exc:
                    failures += 1
                    result = f"FAILED: {exc}"
                finally:
                    if not rds.answers():
                        rds.start()
                rounds.append(
                    {
                        "round": i,
                        "kind": kind,
                        "strategy": strategy,
                        "fault": where,
                        "outcome": result,
                        "seconds": round(time.monotonic() - t0, 2),
                    }
                )
                print(
                    f"{i:3} {kind:9} {strategy:8} {where:22} {result} ({rounds[-1]['seconds']} s)",
                    flush=True,
                )
                try:
                    if kind != "sentinel":  # its cluster is gone, with its containers
                        c.client.kill(name)
                except FerryError as exc:  # lost: counted in the table already
                    print(f"    {name}: {exc}", flush=True)
    finally:
        if rds.proc is not None and rds.proc.poll() is None:
            rds.kill()
    load = os.getloadavg()
    print(
        "soak: "
        + ", ".join(f"{k} {v}" for k, v in TALLY.items())
        + f", checks failed {failures}, seed {args.seed}, {time.monotonic() - started:.0f} s, "
        f"load {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "seed": args.seed,
                "kinds": sorted(kinds),
                "tally": TALLY,
                "failures": failures,
                "load_avg": load,
                "machine": "2 vCPUs shared with four other engineers' runs",
                "rounds": rounds,
            },
            indent=1,
        )
    )
    bad = (
        TALLY["containers lost"]
        + TALLY["containers duplicated"]
        + TALLY["migrations without a final state"]
        + failures
    )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
