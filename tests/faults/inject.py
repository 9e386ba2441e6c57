"""The faults the suite injects besides killed workers, for its tests and its soak.

Each takes a FaultCluster (tests.faults.cluster) and a migration in flight;
``EVIDENCE`` says how each shows in the migration's record.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from tasks.core.migration import Migration
from tests.faults.cluster import WORKER_DIED, FaultCluster, PrivateRedis, said
from tests.integration.helpers import wait_for

CAP_BPS = 16e6  # slow enough (about 1.3 s for a 16 MiB container's images) to cut half-way
OUTAGE_S = 2.0  # how long a restarted Redis stays away, while the held phase goes on


def resumed(m: Migration) -> bool:
    """A transfer reconnected and went on where it stopped."""
    return any(m.results.get(p, {}).get("resumed") for p in ("precopy", "transfer"))


EVIDENCE: dict[str, Callable[[Migration], bool]] = {
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
