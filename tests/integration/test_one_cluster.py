"""One FERRY_BROKER_URL, one cluster: nodes with their own state dirs see each other."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tasks.api.localcluster import ROOT, LocalCluster
from tests.conftest import TEST_DB
from tests.integration.helpers import wait_for

URL = f"redis://127.0.0.1:6379/{TEST_DB}"


def env_with(state: object, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FERRY_")}
    return {**env, "FERRY_STATE_DIR": str(state), "FERRY_RUNTIME": "sim", **extra}


def ferry(env: dict[str, str], *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tasks.api.cli", *argv],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def no_embedded(state: object) -> None:
    """No embedded Redis was started in ``state``."""
    assert not os.path.exists(f"{state}/redis.sock")
    assert not os.path.exists(f"{state}/redis.pid")


def test_only_the_broker_set_keeps_one_cluster(tmp_path, redis_url) -> None:  # type: ignore[no-untyped-def]
    if redis_url != URL:
        pytest.skip("needs the Redis on 127.0.0.1:6379")
    a, b = tmp_path / "a", tmp_path / "b"
    secret = "one-cluster-secret"
    ca = LocalCluster(a, env_with(a, FERRY_BROKER_URL=URL, FERRY_SECRET=secret))
    for k in [k for k in ca.env if k in ("FERRY_REDIS_URL", "FERRY_RESULT_BACKEND")]:
        del ca.env[k]
    try:
        ca.start_node("oc1")
        other = env_with(b, FERRY_BROKER_URL=URL, FERRY_SECRET=secret)
        # a second state dir, only the broker given: it sees the node of the first
        wait_for(
            lambda: any(
                n["name"] == "oc1" and n["alive"]
                for n in json.loads(ferry(other, "nodes", "--json").stdout or "[]")
            ),
            timeout=60,
        )
    finally:
        ca.stop()
    no_embedded(a)
    no_embedded(b)


def test_rabbitmq_without_a_state_store_is_refused(tmp_path) -> None:  # type: ignore[no-untyped-def]
    res = ferry(env_with(tmp_path, FERRY_BROKER_URL="amqp://guest:guest@127.0.0.1//"), "nodes")
    assert res.returncode == 2, res.stderr
    assert "set FERRY_REDIS_URL" in res.stderr
    assert "Traceback" not in res.stderr
    no_embedded(tmp_path)


def test_a_start_refused_for_a_missing_secret_leaves_no_redis(tmp_path) -> None:  # type: ignore[no-untyped-def]
    res = ferry(env_with(tmp_path, FERRY_BROKER_URL=URL), "worker", "--node", "oc2")
    assert res.returncode == 2, res.stderr
    assert "FERRY_SECRET is not set" in res.stderr
    assert "embedded Redis" not in res.stderr
    no_embedded(tmp_path)
