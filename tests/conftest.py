"""Shared fixtures: a real Redis, real node workers, a real coordinator.

Redis is the one on 127.0.0.1:6379 when it answers (database 9, flushed),
else ferry's embedded one. A missing real service skips a test on a laptop
and fails it in CI (CI=true).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest
import redis

ROOT = Path(__file__).resolve().parent.parent
CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def need(ok: bool, why: str) -> None:
    """Skip with ``why`` on a laptop; fail in CI, where every real service must be there."""
    if not ok:
        if CI:
            pytest.fail(f"CI must run this test: {why}")
        pytest.skip(why)


def criu_works() -> tuple[bool, str]:
    if os.geteuid() != 0:
        return False, "real CRIU needs root"
    if not shutil.which("criu"):
        return False, "criu is not installed (run ops/install-criu.sh)"
    proc = subprocess.run(["criu", "check"], capture_output=True, text=True)
    return proc.returncode == 0, f"criu check fails: {proc.stdout + proc.stderr}".strip()


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    try:
        r = redis.Redis(host="127.0.0.1", port=6379, db=9, socket_connect_timeout=1)
        r.ping()
        r.flushdb()
        return "redis://127.0.0.1:6379/9"
    except redis.RedisError:
        from tasks.broker import ensure_embedded

        sock = ensure_embedded(tmp_path_factory.mktemp("embedded"))
        return f"redis+socket://{sock}"


def _state_url(url: str) -> str:
    return url.replace("redis+socket://", "unix://")


class Cluster:
    """Real ferry processes: a coordinator and node workers, on one Redis."""

    def __init__(self, base: Path, url: str) -> None:
        self.base = base
        self.url = url
        self.env = {**os.environ, "FERRY_STATE_DIR": str(base), "FERRY_BROKER_URL": url,
                    "FERRY_RESULT_BACKEND": url, "FERRY_REDIS_URL": _state_url(url),
                    "FERRY_SECRET": "test-secret-" + base.name, "FERRY_HEARTBEAT_S": "0.5",
                    "PYTHONPATH": str(ROOT)}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.logs = base / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)

    def spawn(self, key: str, argv: list[str]) -> subprocess.Popen[bytes]:
        log = open(self.logs / f"{key}.log", "ab")
        proc = subprocess.Popen([sys.executable, "-m", "tasks.cli", *argv], env=self.env,
                                stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        self.procs[key] = proc
        return proc

    def start_node(self, name: str) -> None:
        self.spawn(name, ["worker", "--node", name])

    def start_coordinator(self) -> None:
        self.spawn("coordinator", ["coordinator"])

    def client(self):  # type: ignore[no-untyped-def]
        from tasks.client import Ferry
        from tasks.settings import Settings

        return Ferry(Settings.from_env(self.env))

    def wait_ready(self, nodes: list[str], timeout: float = 60) -> None:
        client = self.client()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            alive = {n["name"] for n in client.nodes() if n["alive"]}
            workers = self._celery_workers(client)
            if set(nodes) <= alive and client.store.r.exists("ferry:coordinator") and \
                    all(f"urgent.{n}" in workers and f"main.{n}" in workers for n in nodes):
                return
            time.sleep(0.2)
        raise RuntimeError(f"cluster not ready; logs in {self.logs}")

    @staticmethod
    def _celery_workers(client) -> str:  # type: ignore[no-untyped-def]
        replies = client.app.control.ping(timeout=0.5) or []
        return " ".join(k for r in replies for k in r)

    def stop(self) -> None:
        for p in self.procs.values():
            p.terminate()
        for p in self.procs.values():
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()

    def cli(self, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "tasks.cli", *argv], env=self.env, cwd=ROOT,
                              capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[Cluster]:
    """Two real nodes (n1, n2) and a coordinator; CRIU runtime."""
    ok, why = criu_works()
    need(ok, why)
    c = Cluster(tmp_path_factory.mktemp("cluster"), redis_url)
    try:
        c.start_coordinator()
        for n in ("n1", "n2"):
            c.start_node(n)
        c.wait_ready(["n1", "n2"])
        yield c
    finally:
        for k in list(c.client().containers()):
            subprocess.run(["kill", "-9", str(k["pid"])], capture_output=True)
        c.stop()
