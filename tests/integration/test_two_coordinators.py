"""Two coordinators on one queue never both drive one migration: real CRIU, real Redis.

Both consume ``ferry.control`` and ``ferry.control.ticks``; the evacuation's
ticks and every migration's start are sent again and again while it runs, as
redelivery or a second coordinator's sweep would. Each container is still submitted once, each
migration started once, each of its steps run once, and every counter goes on
where it stopped, once.
"""

from __future__ import annotations

import sys
import threading
from collections import Counter
from collections.abc import Iterator

import pytest

from tasks.api.localcluster import LocalCluster
from tasks.messaging.app import CONTROL_QUEUE, EVACUATE_TICK, TICK_QUEUE
from tests.conftest import cluster_env, criu_works, need, running
from tests.integration.helpers import COUNTER, assert_went_on, ticks, wait_for

pytestmark = pytest.mark.criu
NODES = ["k1", "k2", "k3"]


@pytest.fixture(scope="module")
def two(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[LocalCluster]:
    """Three real CRIU nodes and two coordinators."""
    ok, why = criu_works()
    need(ok, why)
    base = tmp_path_factory.mktemp("two-coordinators")
    with running(LocalCluster(base, cluster_env(redis_url)), NODES) as c:
        c.spawn("coordinator-2", "coordinator")
        yield c


def test_a_tick_asked_for_while_one_runs_runs_right_after_it(two: LocalCluster) -> None:
    recs = two.client.store.evacuations
    eid = "e-00000000feed"
    assert recs.hold_tick(eid)
    assert not recs.hold_tick(eid)  # held: the holder is asked to run once more
    assert recs.release_tick(eid) is True
    assert recs.hold_tick(eid)
    assert recs.release_tick(eid) is False  # nobody asked meanwhile


def test_one_tick_is_queued_until_it_starts(two: LocalCluster) -> None:
    recs = two.client.store.evacuations
    eid = "e-00000000beef"
    assert recs.ask_tick(eid)
    assert not recs.ask_tick(eid)  # queued already: it reads what is there when it starts
    recs.took_tick(eid)
    assert recs.ask_tick(eid)
    recs.took_tick(eid)


def test_duplicate_ticks_and_starts_drive_each_migration_once(two: LocalCluster) -> None:
    client = two.client
    names = [f"dup{i}" for i in range(6)]
    infos = {n: client.run("k1", [sys.executable, "-u", "-c", COUNTER], name=n) for n in names}
    for info in infos.values():
        wait_for(lambda info=info: len(ticks(info["log"])) > 5, timeout=30)
    h = client.evacuate("k1", to=["k2", "k3"], max_parallel=4, per_node=2, strategy="cold")
    assert h.id is not None
    stop = threading.Event()

    def again() -> None:  # what redelivery, or a second coordinator, would send
        turns = 3  # a redelivered turn goes on beside the first, until the evacuation ends
        while not stop.wait(0.02):
            client.app.send_task(EVACUATE_TICK, args=(h.id,), queue=TICK_QUEUE)
            if turns:
                turns -= 1
                client.app.send_task(
                    EVACUATE_TICK, args=(h.id,), kwargs={"turn": True}, queue=TICK_QUEUE
                )
            for mv in client.store.evacuations.get(h.id)["moves"].values():
                if mv.get("migration"):
                    client.app.send_task(
                        "ferry.control.start", args=(mv["migration"],), queue=CONTROL_QUEUE
                    )

    sender = threading.Thread(target=again, daemon=True)
    sender.start()
    try:
        rep = h.wait(timeout=120)
    finally:
        stop.set()
        sender.join()
    assert rep["counts"]["moved"] == len(names), rep["message"]
    mids = [r["migration"] for r in rep["containers"]]
    per_container = Counter(m.container for m in client.migrations(None) if m.container in names)
    assert per_container == {n: 1 for n in names}  # none submitted twice
    r = client.store.r
    for mid in mids:
        events = [f["what"] for _, f in client.store.events(mid)]
        assert events.count("start") == 1, (mid, events)
        runs = {k: int(r.get(k)) for k in r.scan_iter(match=f"ferry:deliv:{mid}:*")}
        assert runs and all(n == 1 for n in runs.values()), runs  # every step ran once
    placed = {k["name"]: k["node"] for k in client.containers() if k["name"] in names}
    assert set(placed.values()) <= {"k2", "k3"} and placed.keys() == set(names)
    for n, info in infos.items():
        before = max(ticks(info["log"]))
        wait_for(lambda info=info, before=before: max(ticks(info["log"])) >= before + 5)
        assert_went_on(ticks(info["log"]), before)
        client.kill(n)
    client.uncordon("k1")
