"""The embedded Redis keeps its records in an append-only file: a kill -9 of it (a
node's power cut) loses at most the last second, and `ferry down` stops it."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import redis
from click.testing import CliRunner

from tasks.api.cli import main
from tasks.config import broker
from tests.integration.helpers import wait_for


def aof_holds(state: Path, needle: bytes) -> bool:
    files = [*state.glob("appendonly.aof"), *state.glob("appendonlydir/*.aof")]  # Redis 6, 7
    return any(needle in f.read_bytes() for f in files)


def test_a_record_outlives_a_kill_9_of_the_embedded_redis(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    sock = broker.ensure_embedded(state)
    try:
        r = redis.Redis(unix_socket_path=str(sock))
        r.set("ferry:mig:m-000000000aof", b"the record")
        wait_for(lambda: aof_holds(state, b"m-000000000aof"), timeout=10)  # fsync'd within 1 s
        os.kill(int((state / "redis.pid").read_text()), signal.SIGKILL)
        wait_for(lambda: not broker._answers(sock), timeout=10)
        sock = broker.ensure_embedded(state)  # the next ferry process starts it again
        assert (
            redis.Redis(unix_socket_path=str(sock)).get("ferry:mig:m-000000000aof") == b"the record"
        )
    finally:
        env = {"FERRY_STATE_DIR": str(state), "FERRY_BROKER_URL": "", "FERRY_REDIS_URL": ""}
        res = CliRunner().invoke(main, ["down"], env=env)
    assert res.exit_code == 0, res.output
    assert "stopped the embedded Redis" in res.output
    assert not broker._answers(state / "redis.sock")
