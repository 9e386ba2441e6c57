"""A daemon's next step outlives a Redis restart: a step dispatched while Redis
is away waits in Kombu's connection retry and reaches its queue once Redis is
back (8 s away here). On a Redis of its own, killed with -9 and started on its
append-only file."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import redis

from tasks.config.settings import Settings
from tasks.core.migration import Phase, Send
from tasks.messaging.app import dispatch, make_app
from tests.faults.cluster import PrivateRedis


def test_a_step_sent_while_redis_restarts_reaches_its_queue(tmp_path: Path) -> None:
    rds = PrivateRedis(tmp_path / "redis")
    rds.start()
    try:
        s = Settings(
            state_dir=tmp_path,
            broker_url=rds.url,
            result_backend=rds.url,
            redis_url=f"unix://{rds.sock}",
            secret="patient",
        )
        app = make_app(s)
        dispatch(app, "m-0123456789ab", [Send(Phase.PREPARE, "p1", False, 1)])  # connected
        rds.kill()
        back = threading.Timer(8.0, rds.start)  # deliberate: the outage's length
        back.start()
        t0 = time.monotonic()
        dispatch(app, "m-0123456789ab", [Send(Phase.DUMP, "p1", True, 2)])
        waited = time.monotonic() - t0
        back.join()
        queued = redis.Redis(unix_socket_path=str(rds.sock)).lrange("node.p1.urgent", 0, -1)
        assert [json.loads(m)["headers"]["task"] for m in queued] == ["ferry.node.dump"]
        print(f"dispatch waited {waited:.1f} s for Redis to come back")
    finally:
        rds.kill()
