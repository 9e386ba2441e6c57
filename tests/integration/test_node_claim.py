"""A node name is held by one live worker at a time."""

from __future__ import annotations

import signal

from tasks.api.localcluster import LocalCluster
from tests.integration.helpers import wait_for
from workers import procs


def test_a_second_worker_for_a_node_that_is_up_refuses(sim_cluster: LocalCluster) -> None:
    done = sim_cluster.cli("worker", "--node", "s1", timeout=60)
    assert done.returncode == 2, done.stderr
    said = done.stderr.strip().splitlines()[-1]
    assert said.startswith("error: node s1 is already up at "), said
    assert "one worker per node name" in said
    # s1 is still served by the first worker alone
    assert sim_cluster.procs["s1"].poll() is None
    assert {n.name for n in sim_cluster.client.nodes() if n.alive} >= {"s1", "s2"}


def test_a_node_whose_worker_was_killed_can_start_again_at_once(sim_cluster: LocalCluster) -> None:
    # kill -9 of the node's supervisor: its claim outlives it (for its TTL), its
    # Celery workers do not (they must not serve the node with a dead data plane)
    workers = procs.tree(sim_cluster.procs["s2"].pid)[1:]
    assert workers
    sim_cluster.procs["s2"].send_signal(signal.SIGKILL)
    sim_cluster.procs["s2"].wait(10)
    wait_for(lambda: not any(procs.alive(p) for p in workers), 60)
    del sim_cluster.procs["s2"]
    sim_cluster.start_node("s2")  # on the same host: the dead holder's claim is taken over
    wait_for(lambda: sim_cluster.procs["s2"].poll() is None and _alive(sim_cluster, "s2"), 60)
    sim_cluster.wait_ready(["s1", "s2"])
    assert sim_cluster.procs["s2"].poll() is None


def _alive(c: LocalCluster, node: str) -> bool:
    return any(n.name == node and n.alive for n in c.client.nodes())
