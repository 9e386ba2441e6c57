"""The faults the suite injects besides killed workers, for its tests and its soak.

Each takes a FaultCluster (tests.faults.cluster) and a migration in flight;
``EVIDENCE`` says how each shows in the migration's record.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import pytest

from tasks.api.localcluster import ROOT
from tasks.core.migration import Migration
from tasks.messaging import auth
from tasks.messaging.app import node_queue
from tasks.messaging.transport import DEAD_COUNT
from tests.faults.cluster import WORKER_DIED, FaultCluster, PrivateRedis, said
from tests.integration.helpers import wait_for
from workers.dataplane.gate import GateLimits
from workers.errors import BadRequest

CAP_BPS = 16e6  # slow enough (about 1.3 s for a 16 MiB container's images) to cut half-way
OUTAGE_S = 2.0  # how long a restarted Redis stays away, while the held phase goes on


def resumed(m: Migration) -> bool:
    """A transfer reconnected and went on where it stopped."""
    return any(m.results.get(p, {}).get("resumed") for p in ("precopy", "transfer"))


# Bad messages anyone with broker access can push (tests/integration/test_garbage_queue.py)
BAD = (
    b"garbage",  # not JSON: Kombu's loads raised out of the worker's loop
    b'{"body": "", "content-type": "application/json"}',  # no properties
    b'{"body": "", "properties": {"delivery_info": {}}}',  # no delivery_tag: KeyError
    b"[1, 2, 3]",
)

EVIDENCE: dict[str, Callable[[Migration], bool]] = {
    # a flood, a replay and a slowloris leave the record alone: their rounds check
    # the dead letters, the refusal and the cut connections themselves
    # (garbage_flood, replay_refused, slowloris_at)
    "garbage": lambda _m: True,
    "replay": lambda _m: True,
    "slowloris": lambda _m: True,
    # the failover need not show in the record: its round checks the promotion
    "sentinel": lambda _m: True,
    "kill": WORKER_DIED,
    "redis": said("(Redis) restarted"),
    "drop": lambda m: resumed(m) or said("Broken pipe", "reset", "timed out")(m),
    "corrupt": said("digest does not match"),
    "disk-full": said("No space left"),
}


def restart_redis_in(
    c: FaultCluster, rds: PrivateRedis, mid: str, point: str, keep_data: bool = True
) -> None:
    """Once a worker holds ``mid`` at ``point``: kill -9 Redis, let the phase go on with
    Redis away, start Redis again (on its data, or empty)."""
    wait_for(lambda: c.held(mid, point), timeout=90)
    rds.kill()
    if not keep_data:
        (rds.home / "appendonly.aof").unlink()
    c.release(mid, point)
    time.sleep(OUTAGE_S)  # deliberate: the outage's length
    rds.start()


def cut_when_sending(c: FaultCluster, mid: str, dst: str, phase: str) -> None:
    """Reset the migration's data-plane connection to ``dst`` (``ss -K``: the kernel
    sends a RST) once ``phase`` has sent bytes."""
    port = c.client.node(dst).address.rpartition(":")[2]

    def sending() -> bool:
        m = c.client.status(mid)
        return (
            m.phase is not None
            and m.phase.value == phase
            and m.results.get("progress", {}).get("bytes_sent", 0) > 0
        )

    wait_for(sending, timeout=60, every=0.01)
    killed = subprocess.run(
        ["ss", "-K", "dst", "127.0.0.1", "dport", "=", f":{port}"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert f":{port}" in killed.stdout, "no connection to cut"


@contextmanager
def full_disk(c: FaultCluster, node: str, size: str = "4m") -> Iterator[FaultCluster]:
    """``node``'s incoming images on a ``size`` tmpfs (restarting its worker to use it)."""
    incoming = c.base / "nodes" / node / "incoming"
    others = [n for n in c.procs if n not in ("coordinator", "flower")]
    c.stop(node)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(incoming)], check=True
    )
    try:
        c.start_node(node)
        c.wait_ready(others)
        yield c
    finally:
        c.stop(node)
        subprocess.run(["umount", "-l", str(incoming)], check=True)
        c.start_node(node)
        c.wait_ready(others)


@contextmanager
def garbage_flood(r: Any, queues: Sequence[str], every_s: float = 0.05) -> Iterator[list[int]]:
    """Push :data:`BAD` messages onto ``queues`` until the block ends; then wait
    until every one was moved aside (the dead-letter count grew by as many)."""
    stop, pushed = threading.Event(), [0]
    start = int(r.get(DEAD_COUNT) or 0)

    def flood() -> None:
        while not stop.is_set():
            for q in queues:
                r.lpush(q, BAD[pushed[0] % len(BAD)])
                pushed[0] += 1
            stop.wait(every_s)

    t = threading.Thread(target=flood, daemon=True)
    t.start()
    try:
        yield pushed
    finally:
        stop.set()
        t.join(10)
    wait_for(lambda: int(r.get(DEAD_COUNT) or 0) - start >= pushed[0], timeout=30)


@contextmanager
def slowloris_at(c: FaultCluster, node: str, seconds: float = 15.0) -> Iterator[None]:
    """200 connections trickling at ``node``'s data-plane listener
    (tests/integration/slowloris.py) from 2 s before the block for ``seconds``;
    then check the listener cut them, each within its token deadline."""
    host, port = c.client.node(node).address.rsplit(":", 1)
    argv = [sys.executable, "-m", "tests.integration.slowloris", host, port, str(seconds)]
    attack = subprocess.Popen(argv, stdout=subprocess.PIPE, cwd=ROOT)
    time.sleep(2.0)  # every attacking connection is open and trickling
    try:
        yield
    finally:
        out, _ = attack.communicate(timeout=seconds + 30)
    lifetimes = json.loads(out)["lifetimes"]
    assert lifetimes, "the listener cut no trickling connection"
    assert max(lifetimes) <= GateLimits().deadline_s + 1.0, max(lifetimes)


def captured_kill(c: FaultCluster, node: str, name: str) -> tuple[Any, ...]:
    """Start ``name`` on ``node``, kill it with a signed kill and keep that kill's
    arguments, as an attacker reading the queue would: a replay of it must not
    kill the next container of that name."""
    c.client.run(node, ["sleep", "600"], name=name)
    wait_for(lambda: any(k["name"] == name for k in c.client.containers()))
    issued = time.time()
    args = (name, issued, auth.sign(c.client.secret, "kill", issued, node, name))
    send(c, node, "kill", args)
    wait_for(lambda: not any(k["name"] == name for k in c.client.containers()))
    return args


def send(c: FaultCluster, node: str, kind: str, args: tuple[Any, ...]) -> dict[str, Any]:
    res = c.client.app.send_task(f"ferry.node.{kind}", args=args, queue=node_queue(node))
    return c.client._get(res, 30)


def replay_refused(c: FaultCluster, node: str, mid: str, kill: tuple[Any, ...]) -> None:
    """Once ``mid`` runs, replay the captured ``kill`` to ``node``: refused as a replay."""
    wait_for(lambda: c.client.status(mid).phase is not None, timeout=60, every=0.01)
    with pytest.raises(BadRequest, match="replay of a kill command"):
        send(c, node, "kill", kill)
