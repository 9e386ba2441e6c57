"""Every strategy this machine can run, for real, on a process that dirties its memory.

The ones this kernel cannot run are skipped with the nodes' own probe
reason, so the CI log shows which ran.
"""

from __future__ import annotations

import sys

import pytest

from tasks.core.chooser import strategy_refusal
from tasks.core.summary import downtime
from tests.integration.helpers import assert_went_on, dirtying, ticks, wait_for
from workers import procs

pytestmark = pytest.mark.criu


@pytest.mark.parametrize("strategy", ["cold", "delta", "postcopy", "precopy", "hybrid"])
def test_strategy_moves_a_dirtying_process_that_goes_on(cluster, strategy: str) -> None:
    client = cluster.client
    src, dst = (client.node(n).caps for n in ("n1", "n2"))
    refusal = strategy_refusal(strategy, src, dst)
    if refusal:
        pytest.skip(f"{strategy} cannot run on this machine: {refusal}")
    name = f"dirty-{strategy}"
    info = client.run("n1", [sys.executable, "-u", "-c", dirtying(32)], name=name)
    wait_for(lambda: len(ticks(info["log"])) > 5)
    m = client.migrate(name, "n2", strategy=strategy).wait(timeout=120)
    assert m.state.value == "done", m.errors
    assert m.strategy == strategy
    before = max(ticks(info["log"]))
    wait_for(lambda: max(ticks(info["log"])) >= before + 8)
    assert_went_on(ticks(info["log"]), before)
    assert not procs.alive(info["pid"])
    d = downtime(m)
    assert d is not None and d["downtime_ms"] > 0
    if strategy in ("delta", "precopy", "hybrid"):
        assert len(m.passes) >= 1 and "decision" in m.results
    if strategy in ("postcopy", "hybrid"):
        assert m.results["pages"]["last_page_after_restore_ms"] >= 0
        # The restored tree faulted on its pages, and its waits are in the record:
        # the one as it resumed lengthens the final pause, beyond the freeze.
        assert d["faults"] > 0 and d["fault_wait_ms"] > 0
        frozen = (m.results["restore"]["end"] - m.results["dump"]["freeze_start"]) * 1000
        assert d["faults"] > 0 and d["fault_wait_ms"] > 0
        assert d["final_pause_ms"] >= round(frozen, 1) and d["downtime_ms"] >= d["final_pause_ms"]
    print(
        f"{strategy}: downtime {d['downtime_ms']:.0f} ms, passes {len(m.passes)}, "
        f"{m.results.get('decision', {}).get('reason', '')}"
    )
    client.kill(name)
