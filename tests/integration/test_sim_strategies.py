"""SIMULATED: every strategy through the real queue, coordinator and data plane,
on the sim runtime (a model of containers, not CRIU). This runs the
strategies this kernel lacks (precopy, hybrid need soft-dirty tracking);
the real-CRIU runs are in test_strategies.py. The sim's containers dirty
their memory with a hot set (workers.runtimes.simmodel), so pre-copy converges on its
own stop rules instead of falling back.
"""

from __future__ import annotations

import pytest

from tasks.core.summary import downtime
from tests.integration.helpers import wait_for


@pytest.mark.parametrize("strategy", ["cold", "precopy", "delta", "postcopy", "hybrid"])
def test_simulated_strategy_completes_and_the_counter_goes_on(sim_cluster, strategy: str) -> None:
    client = sim_cluster.client
    name = f"sim-{strategy}"
    client.run("s1", ["counter"], name=name, labels={"sim.memory": str(64 << 20)})
    wait_for(lambda: any(c["name"] == name for c in client.containers()))
    m = client.migrate(name, "s2", strategy=strategy).wait(timeout=60)
    assert m.state.value == "done", m.errors
    d = downtime(m)
    assert d is not None
    decision = m.results.get("decision", {})
    if strategy in ("precopy", "delta", "hybrid"):
        assert len(m.passes) >= 2, "the first pass only measures; a second decides"
        assert not m.warnings, m.warnings  # converged: no fallback
        assert decision["rule"] in ("downtime", "goal", "min-pages"), decision
        assert m.passes[-1]["pages_written"] < m.passes[-1]["pages_total"] / 2
    print(
        f"SIMULATED {strategy}: downtime {d['downtime_ms']:.0f} ms, passes {len(m.passes)}, "
        f"{decision.get('reason', '')}"
    )
    client.kill(name)
