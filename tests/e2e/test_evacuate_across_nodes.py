"""Evacuating a node to two others across the testbed: real CRIU, real workers, real links.

node1 holds counters; ``ferry evacuate node1`` drains it while they tick. Each
must end on node2 or node3, running exactly once, its counter having gone on
from where it stopped, its source copy gone; node1 stays cordoned.
"""

from __future__ import annotations

import sys

import pytest

from tests.e2e.netcluster import NetCluster
from tests.e2e.test_cross_node import kill_quietly, tx_bytes, where
from tests.integration.helpers import COUNTER, assert_went_on, ticks, wait_for
from workers import procs

pytestmark = pytest.mark.criu

NAMES = [f"evac{i}" for i in range(4)]


def test_a_node_is_evacuated_to_the_two_others(netcluster: NetCluster) -> None:
    client = netcluster.client
    started = {n: client.run("node1", [sys.executable, "-u", "-c", COUNTER], name=n) for n in NAMES}
    try:
        for info in started.values():
            wait_for(lambda info=info: len(ticks(info["log"])) > 5)
        sent = {n: tx_bytes(netcluster, n) for n in ("node2", "node3")}
        before = {n: max(ticks(info["log"])) for n, info in started.items()}
        report = client.evacuate("node1", max_parallel=4, per_node=2).wait(timeout=240)
        assert report["counts"]["moved"] == len(NAMES), report["message"]
        assert report["left_on_source"] == []
        dsts = {row["container"]: row["dst"] for row in report["containers"]}
        assert set(dsts) == set(NAMES)
        assert set(dsts.values()) == {"node2", "node3"}, "the plan spreads over both nodes"
        resumed = {n: max(ticks(info["log"])) for n, info in started.items()}
        wait_for(lambda: all(max(ticks(i["log"])) >= resumed[n] + 16 for n, i in started.items()))
        for n, info in started.items():
            assert wait_for(lambda n=n: where(netcluster, n) == {dsts[n]}), (
                f"{n}: one copy, on {dsts[n]}"
            )
            assert not procs.alive(info["pid"]), f"{n}: the source copy still runs"
            assert_went_on(ticks(info["log"]), before[n])
        # the images crossed the testbed links into both destinations
        for dst in ("node2", "node3"):
            moved = sum(r["bytes"] for r in report["containers"] if r["dst"] == dst)
            assert tx_bytes(netcluster, dst) - sent[dst] >= moved > 0
        assert client.node("node1").cordoned, "an evacuated node stays cordoned"
        assert not client.node("node2").cordoned and not client.node("node3").cordoned
        print(f"\n{report['message']}")
    finally:
        for n in NAMES:
            kill_quietly(netcluster, n)
        client.uncordon("node1")
