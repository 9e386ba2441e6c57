"""``ferry migrate --strategy precopy`` on a kernel without soft-dirty: the uffd-wp tracker.

A container that checks every page of its memory every tick moves between two
real nodes; its passes never froze it, and it goes on intact on the other side.
"""

from __future__ import annotations

import sys

import pytest

from tasks.core.nodes import caps
from tasks.core.summary import downtime
from tests.integration.helpers import assert_went_on, bad_ticks, ticks, verifying, wait_for
from workers import procs

pytestmark = pytest.mark.criu


def test_precopy_on_the_tracker_moves_a_verifying_container(cluster) -> None:
    client = cluster.client
    src = caps(client.node("n1"))
    if src.dirty_tracker != "uffd-wp":
        pytest.skip(f"n1's dirty tracker is {src.dirty_tracker}, not uffd-wp")
    info = client.run("n1", [sys.executable, "-u", "-c", verifying(64, 2)], name="verifier")
    wait_for(lambda: len(ticks(info["log"])) > 5, timeout=30)
    m = client.migrate("verifier", "n2", strategy="precopy").wait(timeout=120)
    assert m.state.value == "done", m.errors
    assert m.results["precopy"]["tracker"] == "uffd-wp"  # the record names the tracker
    assert "tracker" in m.results["dump"]
    # no pass froze the tree: only the first stopped each process for two system calls
    assert all(p["freeze_ms"] < 50 for p in m.passes), m.passes
    assert all(p.phase != "precopy" or p.ms < 50 for p in m.pauses)
    split = m.results["dump"]["tracker"]
    assert split["pages_sent"] < split["pages_total"]  # the passes had sent the rest
    before = max(ticks(info["log"]))
    wait_for(lambda: max(ticks(info["log"])) >= before + 8, timeout=30)
    assert bad_ticks(info["log"]) == []  # every page it checked held what it wrote
    assert_went_on(ticks(info["log"]), before)
    assert not procs.alive(info["pid"])
    d = downtime(m)
    assert d is not None and d["downtime_ms"] > 0
    print(
        f"precopy/uffd-wp: downtime {d['downtime_ms']:.0f} ms, passes {len(m.passes)}, "
        f"dump {m.results['dump']['frozen_ms']:.0f} ms, split {split}, "
        f"transfer {m.results['transfer']['wall_ms']:.0f} ms, "
        f"restore {m.results['restore']}"
    )
    client.kill("verifier")
