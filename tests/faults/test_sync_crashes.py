"""Kill -9 the worker running each phase of a migration that syncs a node-local dir.

On top of the fault suite's checks (one copy runs, its counter went on,
nothing of the migration left on either node): the synced file is whole where
the container runs (every number once, in order), the other node's copy is
gone, and no rsync daemon or sync state of the migration is left.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import criu_works, need, running
from tests.faults.cluster import NODES, FaultCluster, outcome, said
from tests.faults.conftest import fault_env
from tests.integration.helpers import ticks, wait_for
from workers import failpoints, procs

pytestmark = pytest.mark.criu

# A counter in its log (what the fault suite checks) and in a file it holds
# open in its synced dir.
WRITER = (
    "import os, sys, time\n"
    "f = open(os.path.join(sys.argv[1], 'lines'), 'a')\n"
    "i = 0\n"
    "while True:\n"
    "    f.write(f'{i}\\n'); f.flush(); print('tick', i, flush=True)\n"
    "    i += 1; time.sleep(0.05)\n"
)
POINTS = [
    "prepare:kill-after",
    "sync:kill-before",
    "sync:kill-after",
    "final_sync:kill-before",
    "final_sync:kill-after",
    "restore:kill-before",
    "cleanup:kill-before",
    "cleanup:kill-after",
]


@pytest.fixture(scope="module")
def synced(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[FaultCluster]:
    ok, why = criu_works()
    need(ok, why)
    need(shutil.which("rsync") is not None, "rsync is not installed (apt-get install rsync)")
    base = tmp_path_factory.mktemp("syncfaults")
    (base / "local").mkdir()
    for n in NODES:
        (base / f"{n}-disk").mkdir()
    env = {
        **fault_env(redis_url, str(base / "failpoints")),
        "FERRY_SYNC_ROOTS": str(base / "local"),
    }
    c = FaultCluster(base, env, mounts={n: {base / f"{n}-disk": base / "local"} for n in NODES})
    c.disarm()
    with running(c, list(NODES)):
        yield c


def daemons(c: FaultCluster, mid: str) -> list[int]:
    """Pids of rsync daemons of ``mid`` still running on any node."""
    found = []
    for node in NODES:
        for d in (c.base / "nodes" / node / "fsync" / mid).glob("rsyncd-*/daemon.json"):
            daemon = json.loads(d.read_text())
            if procs.alive(daemon["pid"], daemon["ticks"]):
                found.append(daemon["pid"])
    return found


def disk(c: FaultCluster, node: str) -> Path:
    """What the common path holds on ``node``."""
    return c.base / f"{node}-disk"


def start(c: FaultCluster, name: str) -> str:
    (disk(c, "f1") / name).mkdir()
    (disk(c, "f1") / name / "data").write_bytes(b"x" * 1_000_000)
    info = c.client.run(
        "f1",
        [sys.executable, "-u", "-c", WRITER, str(c.base / "local" / name)],
        name=name,
        sync=[str(c.base / "local" / name)],
    )
    wait_for(lambda: len(ticks(info["log"])) > 5)
    return str(info["log"])


def check(c: FaultCluster, name: str, mid: str, state: str) -> None:
    """The synced file is whole where the container runs; nothing of ``mid`` left elsewhere."""
    here, there = ("f2", "f1") if state == "done" else ("f1", "f2")
    wait_for(
        lambda: not daemons(c, mid) and not (c.base / "nodes" / "f2" / "fsync" / mid).exists(),
        timeout=15,
    )
    lines = [int(x) for x in (disk(c, here) / name / "lines").read_text().split()]
    assert lines == list(range(len(lines))), "a number was lost or written twice"
    assert (disk(c, here) / name / "data").stat().st_size == 1_000_000
    wait_for(lambda: not (disk(c, there) / name).exists(), timeout=15)


@pytest.mark.parametrize("point", POINTS)
def test_a_worker_killed_in_a_sync_migration_loses_nothing(
    synced: FaultCluster, point: str
) -> None:
    c = synced
    name = f"s-{point.replace(':', '-').replace('_', '-')}"
    log = start(c, name)
    c.arm(point)
    try:
        handle = c.client.migrate(name, "f2", strategy="cold")
        handle.wait(timeout=150)
    finally:
        c.disarm()
    state = outcome(c, name, log, handle.id)
    check(c, name, handle.id, state)
    print(f"sync cold {point:22} -> {state}")
    c.client.kill(name)


def test_an_abort_that_died_leaves_the_partial_copy_to_the_heartbeat(synced: FaultCluster) -> None:
    """Cancelled in the first pass, the source resumes at once; the destination's ABORT dies.

    The record is final (rolled back) and nobody sends ABORT again: the
    destination's heartbeat stops the daemon and removes the partial copy.
    """
    c = synced
    log = start(c, "s-abort-dies")
    (disk(c, "f1") / "s-abort-dies" / "big").write_bytes(b"y" * 3_000_000)
    c.arm("abort:kill-before")
    try:
        handle = c.client.migrate("s-abort-dies", "f2", strategy="cold", bandwidth_bps=500_000)
        wait_for(lambda: handle.status().phase == "sync", timeout=30)
        wait_for(lambda: daemons(c, handle.id), timeout=10)
        c.client.cancel(handle.id)
        handle.wait(timeout=60)
        # The source's RESUME ends the rollback; the destination's ABORT runs whenever it
        # gets there (a loaded node takes a while): keep the failpoint armed until it died.
        died = failpoints.mark(c.control, handle.id, "abort:kill-before")
        wait_for(died.exists, timeout=60)
    finally:
        c.disarm()
    assert died.exists(), "ABORT never died"
    (disk(c, "f1") / "s-abort-dies" / "big").unlink()
    state = outcome(c, "s-abort-dies", log, handle.id, fault=said("cancelled"))
    assert state == "rolled_back"
    check(c, "s-abort-dies", handle.id, state)
    c.client.kill("s-abort-dies")
