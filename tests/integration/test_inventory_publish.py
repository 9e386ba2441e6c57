"""A node's inventory, published by its heartbeat and by its tasks: the later read wins."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from tasks.store.migrations import Store
from workers.records import ContainerInfo


@pytest.fixture
def store(redis_url: str) -> Iterator[Store]:
    url = redis_url.replace("redis+socket://", "unix://")
    s = Store(redis.Redis.from_url(url, decode_responses=True))
    yield s
    s.r.delete(*(f"ferry:node:inv-test:{k}" for k in ("containers", "usage", "containers_at")))


def test_a_list_read_before_the_stored_one_is_dropped(store: Store) -> None:
    # a run task publishes its new container while the heartbeat, which read the
    # inventory a moment before the run, is about to publish the old list
    assert store.put_containers("inv-test", [ContainerInfo("web"), ContainerInfo("new")], 100.5)
    assert not store.put_containers("inv-test", [ContainerInfo("web")], 100.0)
    listed = store.r.get("ferry:node:inv-test:containers") or ""
    assert '"new"' in listed
    assert store.put_containers("inv-test", [], 101.0)  # the kill of both, read later
    assert store.r.get("ferry:node:inv-test:containers") == "[]"
