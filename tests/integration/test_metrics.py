"""ferry's Prometheus endpoint against a real Redis with real records and real queued messages."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from tasks.config.broker import ensure_embedded, stop_embedded
from tasks.config.settings import Settings
from tasks.control.metrics import registry_for
from tasks.core.migration import Migration, State
from tasks.core.nodes import NodeRecord
from tasks.messaging.app import make_app
from tasks.store.migrations import Store
from workers.ids import new_id
from workers.records import ContainerInfo

ROOT = Path(__file__).resolve().parents[2]
T0 = 1_700_000_000.0


@pytest.fixture
def settings(redis_url: str, tmp_path: Path) -> Iterator[Settings]:
    """Settings on a Redis database of this test's own (the records are counted whole)."""
    if redis_url.startswith("redis://"):
        url = redis_url.rsplit("/", 1)[0] + "/12"
        redis.Redis.from_url(url).flushdb()
        yield Settings(state_dir=tmp_path, broker_url=url, redis_url=url, secret="metrics")
        redis.Redis.from_url(url).flushdb()
    else:  # no Redis on 6379: an embedded one of its own
        sock = ensure_embedded(tmp_path / "redis")
        yield Settings(
            state_dir=tmp_path,
            broker_url=f"redis+socket://{sock}",
            redis_url=f"unix://{sock}",
            secret="metrics",
        )
        stop_embedded(tmp_path / "redis")


def done(strategy: str, downtime_s: float, total_s: float, nbytes: int) -> Migration:
    freeze = T0 + 1
    results = {
        "dump": {"frozen_ms": 10.0, "freezing_ms": 1.0, "freeze_start": freeze},
        "transfer": {"wall_ms": 5.0, "bytes": nbytes},
        "restore": {"wall_ms": 20.0, "end": freeze + downtime_s},
    }
    return Migration(
        id=new_id(),
        container="c" + new_id()[2:8],
        src="n1",
        dst="n2",
        strategy=strategy,
        state=State.DONE,
        results=results,
        created=T0,
        updated=T0 + total_s,
    )


def populate(settings: Settings) -> None:
    store = Store(redis.Redis.from_url(settings.redis_url, decode_responses=True))
    for m in (
        done("cold", 0.2, 3.0, 1000),
        done("cold", 0.7, 40.0, 3000),
        done("precopy", 0.04, 8.0, 50_000),
        Migration(
            id=new_id(),
            container="bad",
            src="n1",
            dst="n2",
            strategy="cold",
            state=State.ROLLED_BACK,
            created=T0,
            updated=T0 + 2,
            errors=("dump (attempt 1): criu said no", "rolling back: dump failed"),
        ),
        Migration(
            id=new_id(),
            container="slow",
            src="n2",
            dst="n1",
            strategy="precopy",
            state=State.RUNNING,
            created=T0,
            updated=T0 + 1,
            errors=("transfer (attempt 1): stalled", "transfer (attempt 2): stalled"),
        ),
    ):
        store.create(m)
    now = time.time()
    store.put_node(
        NodeRecord(
            "n1",
            state="up",
            last_seen=now,
            probe={"arch": "aarch64"},
            dataplane_refused={"deadline": 7, "busy": 0},  # as the heartbeat reports them
        )
    )
    store.put_node(NodeRecord("n2", state="up", last_seen=now - 600, probe={"arch": "x86_64"}))
    store.put_containers("n1", [ContainerInfo("web"), ContainerInfo("db")])
    store.cordon("n2", True)
    store.beat_coordinator(now, 30)
    app = make_app(settings)  # real messages, as the coordinator queues them
    for _ in range(2):
        app.send_task("ferry.node.prepare", args=("m-000000000000", 1), queue="node.n1")
    app.send_task(
        "ferry.node.restore", args=("m-000000000000", 1), queue="node.n1.urgent", priority=6
    )


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


def value(got: dict[Any, float], name: str, **labels: str) -> float:
    return got[(name, tuple(sorted(labels.items())))]


def test_the_exposition_tells_migrations_queues_and_nodes(settings: Settings) -> None:
    populate(settings)
    got = samples(generate_latest(registry_for(settings)).decode())
    assert value(got, "ferry_migrations", state="done", strategy="cold") == 2
    assert value(got, "ferry_migrations", state="done", strategy="precopy") == 1
    assert value(got, "ferry_migrations", state="rolled_back", strategy="cold") == 1
    assert value(got, "ferry_migrations", state="running", strategy="precopy") == 1
    # downtime: 0.2 s and 0.7 s (cold), 0.04 s (precopy); only DONE migrations count
    assert value(got, "ferry_migration_downtime_seconds_bucket", strategy="cold", le="0.25") == 1
    assert value(got, "ferry_migration_downtime_seconds_bucket", strategy="cold", le="1.0") == 2
    assert value(got, "ferry_migration_downtime_seconds_count", strategy="cold") == 2
    assert value(got, "ferry_migration_downtime_seconds_sum", strategy="cold") == pytest.approx(0.9)
    assert value(got, "ferry_migration_downtime_seconds_bucket", strategy="precopy", le="0.05") == 1
    # total time of final migrations: 3 s, 40 s and the rolled-back one's 2 s (cold)
    assert value(got, "ferry_migration_duration_seconds_bucket", strategy="cold", le="5.0") == 2
    assert value(got, "ferry_migration_duration_seconds_count", strategy="cold") == 3
    assert value(got, "ferry_migration_bytes_sent_total", strategy="cold") == 4000
    assert value(got, "ferry_migration_bytes_sent_total", strategy="precopy") == 50_000
    assert value(got, "ferry_migration_failed_attempts_total", strategy="cold", phase="dump") == 1
    assert (
        value(got, "ferry_migration_failed_attempts_total", strategy="precopy", phase="transfer")
        == 2
    )
    assert value(got, "ferry_queue_messages", node="n1", queue="node.n1") == 2
    assert value(got, "ferry_queue_messages", node="n1", queue="node.n1.urgent") == 1
    assert value(got, "ferry_queue_messages", node="n2", queue="node.n2") == 0
    assert value(got, "ferry_node_up", node="n1", arch="aarch64") == 1
    assert value(got, "ferry_node_up", node="n2", arch="x86_64") == 0
    assert value(got, "ferry_node_cordoned", node="n2") == 1
    assert value(got, "ferry_node_containers", node="n1") == 2
    assert value(got, "ferry_coordinator_up") == 1
    assert value(got, "ferry_dataplane_refused_total", node="n1", reason="deadline") == 7


def test_an_empty_cluster_is_all_zeros_not_an_error(settings: Settings) -> None:
    got = samples(generate_latest(registry_for(settings)).decode())
    assert value(got, "ferry_coordinator_up") == 0
    assert value(got, "ferry_queue_dead_letters_total") == 0
    assert not [
        k
        for k in got
        if k[0].startswith(("ferry_node_", "ferry_queue_"))
        and k[0] != "ferry_queue_dead_letters_total"
    ]


def test_serve_answers_on_http_and_stops_on_sigterm(settings: Settings) -> None:
    populate(settings)
    env = {
        **os.environ,
        "FERRY_STATE_DIR": str(settings.state_dir),
        "FERRY_BROKER_URL": settings.broker_url,
        "FERRY_REDIS_URL": settings.redis_url,
        "FERRY_SECRET": settings.secret,
        "PYTHONPATH": str(ROOT),
    }
    code = (
        "from tasks.control.metrics import serve; from tasks.config.settings import Settings; "
        "serve(Settings.from_env(), 0, '127.0.0.1')"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("ferry: metrics on http://127.0.0.1:"), line
        url = line.split()[-1]
        with urllib.request.urlopen(url, timeout=10) as resp:
            text = resp.read().decode()
        assert 'ferry_migrations{state="done",strategy="cold"} 2.0' in text
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
