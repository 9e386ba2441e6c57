"""Kill -9 the worker running each phase, and the coordinator: the container is
never lost, never duplicated, and every migration ends DONE or ROLLED_BACK with
the fault in its record.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from tasks.localcluster import LocalCluster
from tests.faults.tally import TALLY
from tests.integration.helpers import assert_went_on, dirtying, ticks, wait_for
from workers import procs

pytestmark = pytest.mark.criu

COLD = ["prepare:kill-before", "dump:kill-before", "dump:kill-after", "transfer:kill-before",
        "transfer:kill-after", "restore:kill-before", "restore:kill-after", "verify:kill-after",
        "cleanup:kill-before", "cleanup:kill-after"]
POSTCOPY = ["dump:kill-after", "restore:kill-after", "pages:kill-before"]


def copies(cluster: LocalCluster, name: str) -> list[int]:
    """Pids of the live copies of ``name``, on every node's inventory."""
    live = []
    for node in ("f1", "f2"):
        d = cluster.base / "nodes" / node / "containers" / f"{name}.json"
        if d.exists():
            import json

            entry = json.loads(d.read_text())
            if procs.alive(entry["pid"], entry["ticks"]) and procs.state(entry["pid"]) != "T":
                live.append(entry["pid"])
    return live


def leftovers(cluster: LocalCluster, mid: str) -> list[Path]:
    return [p for node in ("f1", "f2") for p in
            (cluster.base / "nodes" / node / "images" / mid,
             cluster.base / "nodes" / node / "incoming" / mid) if p.exists()]


def check_outcome(faults, name: str, log: str, mid: str) -> str:  # type: ignore[no-untyped-def]
    TALLY["faults tried"] += 1
    m = faults.client.status(mid)
    TALLY["migrations without a final state"] += 0 if m.state.final else 1
    assert m.state.final, f"{mid} has no final state: {m.state}"
    assert m.state.value in ("done", "rolled_back"), m.errors
    assert any("restarted" in e or "stalled" in e or "answering" in e for e in m.errors), m.errors
    try:
        wait_for(lambda: len(copies(faults, name)) == 1, timeout=10)
    finally:
        n = len(copies(faults, name))
        TALLY["containers lost"] += n == 0
        TALLY["containers duplicated"] += n > 1
    before = max(ticks(log))
    time.sleep(0.5)
    assert_went_on(ticks(log), before)
    assert len(copies(faults, name)) == 1
    wait_for(lambda: not leftovers(faults, mid), timeout=10)
    return m.state.value


@pytest.mark.parametrize("strategy,point", [("cold", p) for p in COLD] +
                         [("postcopy", p) for p in POSTCOPY])
def test_a_worker_killed_in_a_phase_loses_nothing(faults, strategy: str, point: str) -> None:
    client = faults.client
    name = f"f-{strategy}-{point.replace(':', '-')}"
    info = client.run("f1", [sys.executable, "-u", "-c", dirtying(16)], name=name)
    wait_for(lambda: len(ticks(info["log"])) > 5)
    faults.arm(point)
    try:
        handle = client.migrate(name, "f2", strategy=strategy)
        handle.wait(timeout=120)
    finally:
        faults.disarm()
    outcome = check_outcome(faults, name, info["log"], handle.id)
    TALLY[outcome.replace("_", " ")] += 1
    print(f"{strategy:8} {point:22} -> {outcome}")
    client.kill(name)


def test_a_coordinator_killed_mid_migration_is_recovered(faults) -> None:
    client = faults.client
    info = client.run("f1", [sys.executable, "-u", "-c", dirtying(16)], name="f-coordinator")
    wait_for(lambda: len(ticks(info["log"])) > 5)
    faults.procs["coordinator"].kill()
    faults.procs["coordinator"].wait()
    handle = client.migrate("f-coordinator", "f2", strategy="cold")
    time.sleep(2)
    faults.start_coordinator()
    m = handle.wait(timeout=60)
    assert m.state.value == "done", m.errors
    assert len(copies(faults, "f-coordinator")) == 1
    client.kill("f-coordinator")
