"""A corrupt record in the state store is reported and skipped: the sweep, `ferry status`
and the metrics go on with every other migration."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import pytest
import redis

from tasks.config.settings import Settings
from tasks.control.cluster import Cluster
from tasks.control.coordinator import sweep
from tasks.core.migration import Migration, Phase, State
from tasks.core.nodes import NodeRecord
from tasks.core.watchdog import Timeouts
from tasks.messaging.app import make_app
from tasks.store.migrations import Store
from workers.errors import CorruptRecord
from workers.records import ContainerInfo

BROKEN = "m-00000000dead"


@pytest.fixture
def store(redis_url: str) -> Iterator[Store]:
    s = Store(
        redis.Redis.from_url(redis_url.replace("redis+socket://", "unix://"), decode_responses=True)
    )
    s.r.flushdb()
    yield s
    s.r.flushdb()


def test_a_corrupt_record_is_skipped_and_the_sweep_drives_the_others(
    store: Store, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    now = time.time() - 3600  # long overdue: the sweep must time it out
    ok = Migration(
        id="m-0123456789ab",
        container="c",
        src="a",
        dst="b",
        state=State.RUNNING,
        phase=Phase.DUMP,
        step=1,
        created=now,
        updated=now,
    )
    store.create(ok)
    store.r.set(f"ferry:mig:{BROKEN}", '{"id": "m-00000000dead", "state": "no such state"')
    store.r.zadd("ferry:migs", {BROKEN: now + 1})
    store.r.sadd("ferry:active", BROKEN)
    app = make_app(Settings(broker_url=redis_url, result_backend=redis_url))
    with caplog.at_level(logging.ERROR):
        applied = sweep(app, store, Timeouts(min_total_s=1), node_ttl_s=15)
    assert applied == 1  # the good one timed out and rolls back; the broken one stalled nothing
    assert store.get(ok.id).state is State.ROLLING_BACK
    assert any(BROKEN in r.getMessage() for r in caplog.records)
    with pytest.raises(CorruptRecord, match=BROKEN):
        store.get(BROKEN)
    assert [m.id for m in store.iter_migrations()] == [ok.id]
    assert [m.id for m in store.all_migrations()] == [ok.id]


@pytest.mark.parametrize(
    "raw",
    [
        '{"name": "bad", "state": "up"',  # cut mid-write
        '["bad"]',  # not an object
        '{"name": "bad", "last_seen": "yesterday"}',  # a field of the wrong type
    ],
)
def test_a_corrupt_node_record_is_skipped_by_every_reader(
    store: Store, redis_url: str, raw: str, caplog: pytest.LogCaptureFixture
) -> None:
    now = time.time()
    store.put_node(NodeRecord("good", state="up", last_seen=now, probe={"arch": "x86_64"}))
    store.put_containers("good", [ContainerInfo("web", pid=1, memory_bytes=1 << 20)])
    store.r.set("ferry:node:bad", raw)
    store.r.sadd("ferry:nodes", "bad")
    with caplog.at_level(logging.ERROR):
        listed = store.nodes()
        sweep(make_app(Settings(broker_url=redis_url, result_backend=redis_url)), store,
              Timeouts(min_total_s=1), node_ttl_s=15)  # fmt: skip
    # (a session's sim cluster may share this database: only its nodes join the list)
    good = [n for n in listed if n.name in ("good", "bad")]
    assert [n.name for n in good] == ["good"]
    assert good[0].containers[0].memory_bytes == 1 << 20
    assert any(
        "node bad" in r.getMessage() or "node record" in r.getMessage() for r in caplog.records
    )
    with pytest.raises(CorruptRecord):
        store.node("bad")
    (light,) = [n for n in store.nodes(inventories=()) if n.name in ("good", "bad")]
    assert light.containers == () and light.taken == good[0].taken  # its usage, not its inventory
    settings = Settings(broker_url=redis_url, result_backend=redis_url, secret="s" * 32)
    cluster = Cluster(settings, store=store)
    (seen,) = [n for n in cluster.nodes() if n.name in ("good", "bad")]
    assert seen.name == "good" and seen.alive
    assert [c["name"] for c in cluster.containers() if c["node"] == "good"] == ["web"]
