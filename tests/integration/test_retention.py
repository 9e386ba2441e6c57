"""Retention on a real Redis of this test's own: the coordinator's sweep prunes the
records and event streams of finished migrations the policy no longer keeps
(never one in flight), `ferry status` still finds the rest, and a node drops
the kept CRIU logs of the pruned ones. SIMULATED containers (the sim runtime):
what is pruned is the bookkeeping, not a container."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import redis

from tasks.api.localcluster import LocalCluster
from tasks.config.broker import ensure_embedded, stop_embedded
from tasks.core.migration import Migration, State
from tasks.core.retention import DAY_S, Retention
from tasks.store.migrations import Store
from tests.conftest import cluster_env, running
from tests.integration.helpers import wait_for
from workers.errors import BadRequest
from workers.ids import new_id


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[str]:
    """A Redis no other test shares: the policy counts every record in it."""
    sock = ensure_embedded(tmp_path / "redis")
    yield f"redis+socket://{sock}"
    stop_embedded(tmp_path / "redis")


def store_of(url: str) -> Store:
    return Store(
        redis.Redis.from_url(url.replace("redis+socket://", "unix://"), decode_responses=True)
    )


def made(store: Store, created: float, final: bool) -> str:
    m = Migration(id=new_id(), container="c", src="a", dst="b", created=created, updated=created)
    store.create(m)
    if final:
        store.update(m.id, lambda m: replace(m, state=State.DONE), "done")
    return m.id


def test_prune_drops_old_and_surplus_finished_records_never_one_in_flight(own_redis: str) -> None:
    store = store_of(own_redis)
    now = time.time()
    ancient_busy = made(store, now - 90 * DAY_S, final=False)
    old = [made(store, now - d * DAY_S, final=True) for d in (60, 45, 31)]
    recent = [made(store, now - 100 + i, final=True) for i in range(5)]
    busy = made(store, now - 50, final=False)
    for mid in old + recent:
        assert store.events(mid)

    # the age: 30 days
    assert sorted(store.prune(Retention(days=30, migrations=100), now)) == sorted(old)
    # the count: the newest 5 are kept (one in flight among them); the one in
    # flight beyond them stays too, so of 7 only the oldest finished one goes
    assert store.prune(Retention(days=30, migrations=5), now, batch=3) == recent[:1]
    assert store.prune(Retention(days=30, migrations=5), now) == []
    assert store.prune(Retention(days=30, migrations=2), now) == recent[1:4]

    for mid in old + recent[:4]:
        with pytest.raises(BadRequest, match="no migration"):
            store.get(mid)
        assert store.events(mid) == []
    assert store.indexed([*old, *recent, busy, ancient_busy]) == [False] * 7 + [True] * 3
    assert {store.get(m).state for m in (busy, ancient_busy)} == {State.PENDING}
    assert store.get(recent[4]).state is State.DONE
    assert set(store.ids(100)) == {recent[4], busy, ancient_busy}


def test_the_coordinator_prunes_and_the_nodes_drop_their_logs(
    own_redis: str, tmp_path: Path
) -> None:
    env = {**cluster_env(own_redis), "FERRY_RUNTIME": "sim", "FERRY_RETENTION_MIGRATIONS": "2"}
    with running(LocalCluster(tmp_path / "c", env), ["s1", "s2"]) as c:
        client = c.client
        client.run("s1", ["counter"], name="kept")
        wait_for(lambda: any(k["name"] == "kept" for k in client.containers()))
        mids = []
        for dst in ("s2", "s1", "s2", "s1"):
            m = client.migrate("kept", dst, strategy="cold").wait(timeout=60)
            assert m.state is State.DONE, m.errors
            mids.append(m.id)
        gone, kept = mids[:2], mids[2:]
        wait_for(lambda: client.store.indexed(mids) == [False, False, True, True], timeout=30)

        for mid in kept:
            got = c.cli("status", mid)
            assert got.returncode == 0 and mid in got.stdout, got.stderr
        for mid in gone:
            got = c.cli("status", mid)
            assert got.returncode == 2 and f"no migration {mid}" in got.stderr, got
            assert client.store.events(mid) == []
        listed = c.cli("status", "--all", "--json")
        assert listed.returncode == 0 and all(m not in listed.stdout for m in gone)

        logs = [tmp_path / "c" / "nodes" / n / "logs" for n in ("s1", "s2")]
        assert all((d / mid).is_dir() for d in logs for mid in mids)
        for n in ("s1", "s2"):  # a node prunes its logs at its first heartbeat, then each minute
            c.stop(n)
            c.start_node(n)
        c.wait_ready(["s1", "s2"])
        wait_for(lambda: not any((d / mid).exists() for d in logs for mid in gone), timeout=30)
        assert all((d / mid).is_dir() for d in logs for mid in kept)
        assert [k["name"] for k in client.containers()] == ["kept"]
        client.kill("kept")
