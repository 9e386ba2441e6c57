"""Shared fixtures: a real Redis, real node workers, a real coordinator.

Redis is the one on 127.0.0.1:6379 when it answers (database 9, flushed;
FERRY_TEST_DB picks another, so two test runs on one machine keep apart),
else ferry's embedded one. A missing real service skips a test on a laptop
and fails it in CI (CI=true).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TypeVar

import pytest
import redis

from tasks.api.demo import criu_usable
from tasks.api.localcluster import ROOT, LocalCluster

C = TypeVar("C", bound=LocalCluster)

CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
TEST_DB = int(os.environ.get("FERRY_TEST_DB", "9"))


def need(ok: bool, why: str) -> None:
    """Skip with ``why`` on a laptop; fail in CI, where every real service must be there."""
    if not ok:
        if CI:
            pytest.fail(f"CI must run this test: {why}")
        pytest.skip(why)


criu_works = criu_usable  # whether real CRIU can run here, and why not


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    try:
        r = redis.Redis(host="127.0.0.1", port=6379, db=TEST_DB, socket_connect_timeout=1)
        r.ping()
        r.flushdb()
    except redis.RedisError:
        from tasks.config.broker import ensure_embedded, stop_embedded

        home = tmp_path_factory.mktemp("embedded")
        yield f"redis+socket://{ensure_embedded(home)}"
        stop_embedded(home)  # leave no server behind the session
        return
    yield f"redis://127.0.0.1:6379/{TEST_DB}"


def cluster_env(url: str) -> dict[str, str]:
    return {
        "FERRY_BROKER_URL": url,
        "FERRY_RESULT_BACKEND": url,
        "FERRY_REDIS_URL": url.replace("redis+socket://", "unix://"),
        # One secret for every test cluster: they share the broker, so any
        # coordinator may serve any cluster's control tasks.
        "FERRY_SECRET": "test-secret-of-this-session",
        "PYTHONPATH": str(ROOT),
        "FERRY_ALLOW_PIPE_MAX_SIZE": "1",
    }


@contextmanager
def running(c: C, nodes: list[str]) -> Iterator[C]:
    """``c`` with its coordinator and ``nodes`` up; every container killed and all stopped after."""
    try:
        c.start_coordinator()
        for n in nodes:
            c.start_node(n)
        c.wait_ready(nodes)
        yield c
    finally:
        for k in c.client.containers():  # its own nodes' only: other clusters share the Redis
            if k["node"] in nodes and k["pid"] > 0:
                subprocess.run(["kill", "-9", str(k["pid"])], capture_output=True)
        c.stop()


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[LocalCluster]:
    """Two real nodes (n1, n2) and a coordinator; CRIU runtime."""
    ok, why = criu_works()
    need(ok, why)
    base = tmp_path_factory.mktemp("cluster")
    with running(LocalCluster(base, cluster_env(redis_url)), ["n1", "n2"]) as c:
        yield c


@pytest.fixture(scope="session")
def sim_cluster(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[LocalCluster]:
    """Two SIMULATED nodes (s1, s2) and a coordinator: the sim runtime, labelled as such."""
    base = tmp_path_factory.mktemp("simcluster")
    env = {**cluster_env(redis_url), "FERRY_RUNTIME": "sim"}
    with running(LocalCluster(base, env), ["s1", "s2"]) as c:
        yield c
