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
    wait_for(lambda: len(ticks(info["log"])) >= n + 5)
    assert procs.alive(info["pid"]) and procs.state(info["pid"]) != "T"
    assert len(ticks(info["log"])) > n


@pytest.mark.parametrize(
    "call,error,words",
    [
        (lambda c: c.migrate("victim", "nowhere"), UnknownNode, "unknown node 'nowhere'"),
        (lambda c: c.migrate("ghost", "n2"), UnknownContainer, "unknown container 'ghost'"),
        (lambda c: c.migrate("victim", "n1"), BadRequest, "already runs on n1"),
        (lambda c: c.migrate("victim", "N2;rm -rf /"), BadRequest, "bad node name"),
        (lambda c: c.migrate("../etc", "n2"), BadRequest, "bad container name"),
        (lambda c: c.migrate("victim", "n2", strategy="teleport"), BadRequest, "unknown strategy"),
    ],
)
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
    wait_for(lambda: any(n.name == "nocriu" and n.alive for n in client.nodes()), timeout=30)
    with pytest.raises(CapabilityError, match="nocriu cannot run CRIU"):
        client.migrate("victim", "nocriu")
    cluster.stop("nocriu")
    _still_running(client, info)


FORGED = "0" * 64


@pytest.mark.parametrize(
    "task,args,refusal",
    [
        ("ferry.node.dump", ("../../etc/passwd", 1), "BadRequest"),
        ("ferry.node.restore", ("m-000000000000", "1; rm -rf /"), "BadRequest"),
        ("ferry.node.run", ("x", "rm -rf /", {}, [], "", 0.0, FORGED), "BadRequest"),
        ("ferry.node.run", ("../x", ["true"], {}, [], "", 0.0, FORGED), "BadRequest"),
        ("ferry.node.run", ("evil", ["true"], {}, "/etc", "", 0.0, FORGED), "BadRequest"),
        ("ferry.node.run", ("evil", ["true"], {}, [], ["10.0.0.5/24"], 0.0, FORGED), "BadRequest"),
        ("ferry.node.kill", ("victim; reboot", 0.0, FORGED), "BadRequest"),
        # well-formed, but not signed with the cluster secret
        (
            "ferry.node.run",
            ("evil", ["touch", "/tmp/ferry-pwned"], {}, [], "", "now", FORGED),
            "TokenError",
        ),
        ("ferry.node.kill", ("victim", "now", FORGED), "TokenError"),
        ("ferry.node.kill", ("victim",), "TypeError"),
    ],
)
def test_malformed_or_unsigned_messages_sent_straight_to_a_node_queue_fail_cleanly(
    victim, task, args, refusal
) -> None:  # type: ignore[no-untyped-def]
    client, info = victim
    args = tuple(time.time() if a == "now" else a for a in args)
    res = client.app.send_task(task, args=args, queue="node.n1")
    res.get(timeout=20, propagate=False)
    assert res.failed()
    assert refusal in repr(res.result)
    assert not any(c["name"] == "evil" for c in client.containers())
    _still_running(client, info)


def test_a_tampered_migration_record_is_refused_by_the_node(victim) -> None:  # type: ignore[no-untyped-def]
    client, info = victim
    from dataclasses import replace

    from tasks.core.migration import Migration, Phase, State
    from workers.ids import new_id

    m = Migration(
        id=new_id(),
        container="victim",
        src="n1",
        dst="n2",
        state=State.RUNNING,
        phase=Phase.DUMP,
        step=1,
        attempt=1,
        created=time.time(),
        updated=time.time(),
    )
    client.store.create(replace(m, mac=FORGED))
    res = client.app.send_task("ferry.node.dump", args=(m.id, 1), queue="node.n1.urgent")
    res.get(timeout=20, propagate=False)
    assert res.failed() and "TokenError" in repr(res.result)
    assert client.status(m.id).phase is Phase.DUMP  # nothing moved on
    _still_running(client, info)
