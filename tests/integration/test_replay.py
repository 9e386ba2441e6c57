"""A signed node command runs once: a captured one replayed is refused, also after
the node's worker restarted (the nonce is kept in Redis, not in the worker)."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tasks.api.localcluster import LocalCluster
from tasks.messaging import auth
from tasks.messaging.app import node_queue
from tests.integration.helpers import wait_for
from workers.errors import BadRequest


def send(c: LocalCluster, kind: str, args: tuple[Any, ...]) -> dict[str, Any]:
    res = c.client.app.send_task(f"ferry.node.{kind}", args=args, queue=node_queue("s1"))
    return c.client._get(res, 30)


def names(c: LocalCluster) -> set[str]:
    return {k["name"] for k in c.client.containers() if k["node"] == "s1"}


def test_a_captured_kill_and_run_replayed_are_refused(sim_cluster: LocalCluster) -> None:
    c, secret = sim_cluster, sim_cluster.client.secret
    issued = time.time()
    run = ("replayed", ["count"], {}, [], "", issued)
    run_mac = auth.sign(secret, "run", issued, "s1", "replayed", ["count"], {}, [], "")
    assert send(c, "run", (*run, run_mac))["name"] == "replayed"
    kill = ("replayed", issued, auth.sign(secret, "kill", issued, "s1", "replayed"))
    assert send(c, "kill", kill)["killed"]
    wait_for(lambda: "replayed" not in names(c))
    with pytest.raises(BadRequest, match="replay of a run command"):
        send(c, "run", (*run, run_mac))  # the captured run does not start it again
    c.client.run("s1", ["count"], name="replayed")  # the same name, started anew
    with pytest.raises(BadRequest, match="replay of a kill command"):
        send(c, "kill", kill)  # the captured kill does not kill the new one
    c.stop("s1")  # the node's worker restarts: what ran is still known
    c.start_node("s1")
    c.wait_ready(["s1", "s2"])
    with pytest.raises(BadRequest, match="replay of a kill command"):
        send(c, "kill", kill)
    assert "replayed" in names(c)
    c.client.kill("replayed")
