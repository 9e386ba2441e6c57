"""Bad input: a clear error, nothing changed, the container still running."""

from __future__ import annotations

import sys
import time

import pytest

from tests.integration.helpers import COUNTER, ticks, wait_for
from workers import procs
from workers.errors import BadRequest, CapabilityError, UnknownContainer, UnknownNode

pytestmark = pytest.mark.criu


@pytest.fixture
def victim(cluster):  # type: ignore[no-untyped-def]
    client = cluster.client
    info = client.run("n1", [sys.executable, "-u", "-c", COUNTER], name="victim")
    wait_for(lambda: any(c["name"] == "victim" for c in client.containers()))
    yield client, info
    client.kill("victim")


def _still_running(client, info) -> None:  # type: ignore[no-untyped-def]
    n = len(ticks(info["log"]))
    time.sleep(0.3)
    assert procs.alive(info["pid"]) and procs.state(info["pid"]) != "T"
    assert len(ticks(info["log"])) > n


@pytest.mark.parametrize("call,error,words", [
    (lambda c: c.migrate("victim", "nowhere"), UnknownNode, "unknown node 'nowhere'"),
    (lambda c: c.migrate("ghost", "n2"), UnknownContainer, "unknown container 'ghost'"),
    (lambda c: c.migrate("victim", "n1"), BadRequest, "already runs on n1"),
    (lambda c: c.migrate("victim", "N2;rm -rf /"), BadRequest, "bad node name"),
    (lambda c: c.migrate("../etc", "n2"), BadRequest, "bad container name"),
    (lambda c: c.migrate("victim", "n2", strategy="teleport"), BadRequest, "unknown strategy"),
])
def test_bad_requests_are_refused_and_change_nothing(victim, call, error, words) -> None:  # type: ignore[no-untyped-def]
    client, info = victim
    before = client.store.ids()
    with pytest.raises(error, match=words.replace("(", r"\(")):
        call(client)
    assert client.store.ids() == before
    _still_running(client, info)


def test_a_node_without_criu_is_refused(cluster, victim) -> None:  # type: ignore[no-untyped-def]
    client, info = victim
    cluster.start_node("nocriu", env={"FERRY_CRIU_BIN": "/nonexistent/criu"})
    wait_for(lambda: any(n["name"] == "nocriu" and n["alive"] for n in client.nodes()), timeout=30)
    with pytest.raises(CapabilityError, match="nocriu cannot run CRIU"):
        client.migrate("victim", "nocriu")
    cluster.stop("nocriu")
    _still_running(client, info)


@pytest.mark.parametrize("task,args", [
    ("ferry.node.dump", ("../../etc/passwd", 1)),
    ("ferry.node.restore", ("m-000000000000", "1; rm -rf /")),
    ("ferry.node.run", ("x", "rm -rf /")),
    ("ferry.node.run", ("../x", ["true"])),
    ("ferry.node.kill", ("victim; reboot",)),
])
def test_malformed_messages_sent_straight_to_a_node_queue_fail_cleanly(victim, task, args) -> None:  # type: ignore[no-untyped-def]
    client, info = victim
    res = client.app.send_task(task, args=args, queue="node.n1")
    res.get(timeout=20, propagate=False)
    assert res.failed()
    assert "BadRequest" in repr(res.result) or "bad" in str(res.result).lower()
    _still_running(client, info)
