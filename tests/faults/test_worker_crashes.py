"""Kill -9 the worker running each phase, and the coordinator: the container is
never lost, never duplicated, and every migration ends DONE or ROLLED_BACK with
the fault in its record.
"""

from __future__ import annotations

import sys
import time

import pytest

from tasks.core.chooser import strategy_refusal
from tests.faults.cluster import COLD, DELTA, POSTCOPY, PRECOPY, outcome
from tests.integration.helpers import dirtying, ticks, wait_for

pytestmark = pytest.mark.criu


@pytest.mark.parametrize(
    "strategy,point",
    [("cold", p) for p in COLD]
    + [("postcopy", p) for p in POSTCOPY]
    + [("delta", p) for p in DELTA]
    + [("precopy", p) for p in PRECOPY],
)
def test_a_worker_killed_in_a_phase_loses_nothing(faults, strategy: str, point: str) -> None:
    client = faults.client
    refusal = strategy_refusal(strategy, *(client.node(n).caps for n in ("f1", "f2")))
    if refusal:
        pytest.skip(f"{strategy} cannot run on this machine: {refusal}")
    name = f"f-{strategy}-{point.replace(':', '-')}"
    info = client.run("f1", [sys.executable, "-u", "-c", dirtying(16)], name=name)
    wait_for(lambda: len(ticks(info["log"])) > 5)
    faults.arm(point)
    try:
        handle = client.migrate(name, "f2", strategy=strategy)
        handle.wait(timeout=120)
    finally:
        faults.disarm()
    print(f"{strategy:8} {point:22} -> {outcome(faults, name, info['log'], handle.id)}")
    client.kill(name)


def test_a_coordinator_killed_mid_migration_is_recovered(faults) -> None:
    client = faults.client
    info = client.run("f1", [sys.executable, "-u", "-c", dirtying(16)], name="f-coordinator")
    wait_for(lambda: len(ticks(info["log"])) > 5)
    faults.procs["coordinator"].kill()
    faults.procs["coordinator"].wait()
    handle = client.migrate("f-coordinator", "f2", strategy="cold")
    time.sleep(2)  # deliberate: the migration waits that long with no coordinator
    faults.start_coordinator()
    m = handle.wait(timeout=60)
    assert m.state.value == "done", m.errors
    assert len(faults.copies("f-coordinator")) == 1
    client.kill("f-coordinator")
