"""RabbitMQ as the broker: a real cold migration (real CRIU, real workers), and
one through a flood of bad messages on the node queues.

Celery's messages go through RabbitMQ; the migration records, the node
registry and the task results stay in Redis (FERRY_REDIS_URL and
FERRY_RESULT_BACKEND), on a database of this module's own.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import threading
from collections.abc import Iterator

import amqp
import kombu
import pytest
import redis
from kombu.exceptions import OperationalError

from tasks.api.localcluster import LocalCluster
from tasks.config.broker import ensure_embedded, stop_embedded
from tasks.messaging.transport import DEAD_COUNT, DEAD_LETTERS
from tests.conftest import cluster_env, criu_works, need
from tests.integration.helpers import COUNTER, assert_went_on, celery_workers, ticks, wait_for
from workers import procs

pytestmark = pytest.mark.criu
AMQP_URL = os.environ.get("FERRY_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")
# (body, content type, headers) that Celery cannot take as a task: it acked the
# first three (CRITICAL, gone), rejected the fourth (gone), and the last raised
# out of the worker's loop (a task message without an id)
AMQP_BAD: tuple[tuple[bytes, str | None, dict[str, str] | None], ...] = (
    (b"garbage", None, None),
    (b"garbage", "application/json", None),
    (b"\x80\x04K\x01.", "application/x-python-serialize", None),
    (b"[[], {}, {}]", "application/json", {"task": "ferry.node.nope", "id": "bad-1"}),
    (b"[[], {}, {}]", "application/json", {"task": "ferry.node.prepare"}),
)


def rabbitmq_answers(url: str) -> tuple[bool, str]:
    try:
        with kombu.Connection(url, connect_timeout=2) as conn:
            conn.ensure_connection(max_retries=1)
        return True, ""
    except (OSError, OperationalError, amqp.exceptions.AMQPError) as exc:
        return False, f"RabbitMQ does not answer at {url}: {exc}"


@pytest.fixture(scope="module")
def rabbit(
    tmp_path_factory: pytest.TempPathFactory, redis_url: str
) -> Iterator[tuple[LocalCluster, list[str]]]:
    """A coordinator and two nodes whose broker is RabbitMQ; node names unique to this run."""
    ok, why = rabbitmq_answers(AMQP_URL)
    need(ok, why)
    ok, why = criu_works()
    need(ok, why)
    base = tmp_path_factory.mktemp("rabbit")
    if redis_url.startswith("redis://"):
        # A database of its own: the session's Redis-broker coordinator must not
        # see (and sweep) these migrations, whose tasks it cannot deliver.
        url = redis_url.rsplit("/", 1)[0] + "/13"
        redis.Redis.from_url(url).flushdb()
    else:
        url = f"redis+socket://{ensure_embedded(base / 'redis')}"
    c = LocalCluster(base, {**cluster_env(url), "FERRY_BROKER_URL": AMQP_URL})
    tag = secrets.token_hex(3)
    nodes = [f"rq{tag}a", f"rq{tag}b"]
    try:
        c.start_coordinator()
        for n in nodes:
            c.start_node(n)
        c.wait_ready(nodes)
        yield c, nodes
    finally:
        for k in c.client.containers():
            if k["pid"] > 0:
                subprocess.run(["kill", "-9", str(k["pid"])], capture_output=True, check=False)
        c.stop()
        if not redis_url.startswith("redis://"):
            stop_embedded(base / "redis")


def test_the_broker_is_rabbitmq(rabbit: tuple[LocalCluster, list[str]]) -> None:
    cluster, (src, _) = rabbit
    assert cluster.client.app.connection().transport.driver_type == "amqp"
    with kombu.Connection(AMQP_URL) as conn:
        # passive: fails unless the node's workers declared their queue on RabbitMQ
        declared = conn.default_channel.queue_declare(queue=f"node.{src}", passive=True)
        assert declared.queue == f"node.{src}"


def test_a_cold_migration_over_rabbitmq(rabbit: tuple[LocalCluster, list[str]]) -> None:
    cluster, (src, dst) = rabbit
    client = cluster.client
    info = client.run(src, [sys.executable, "-u", "-c", COUNTER], name="rabbitcount")
    wait_for(lambda: len(ticks(info["log"])) > 10)
    m = client.migrate("rabbitcount", dst).wait(timeout=90)
    assert m.state.value == "done", m.errors
    before = max(ticks(info["log"]))
    wait_for(lambda: max(ticks(info["log"])) >= before + 8)
    assert_went_on(ticks(info["log"]), before)
    assert not procs.alive(info["pid"]), "the source copy still runs"
    assert procs.alive(m.results["verify"]["pid"])
    assert m.results["transfer"]["bytes"] > 0
    client.kill("rabbitcount")


def test_a_flood_of_bad_messages_is_set_aside_and_the_migration_goes_on(
    rabbit: tuple[LocalCluster, list[str]],
) -> None:
    cluster, nodes = rabbit
    client, r = cluster.client, cluster.client.store.r
    workers = {n: celery_workers(cluster, n) for n in nodes}
    assert all(len(w) == 2 for w in workers.values())  # main and urgent
    queues = [q for n in nodes for q in (f"node.{n}", f"node.{n}.urgent")]
    start, stop, pushed = int(r.get(DEAD_COUNT) or 0), threading.Event(), [0]

    def flood() -> None:
        with kombu.Connection(AMQP_URL) as conn:
            ch = conn.default_channel
            while not stop.is_set():
                for q in queues:
                    body, ctype, headers = AMQP_BAD[pushed[0] % len(AMQP_BAD)]
                    msg = ch.prepare_message(body, content_type=ctype, headers=headers)
                    ch.basic_publish(msg, exchange="", routing_key=q)
                    pushed[0] += 1
                stop.wait(0.05)

    info = client.run(nodes[0], [sys.executable, "-u", "-c", COUNTER], name="rabbitflood")
    wait_for(lambda: len(ticks(info["log"])) > 3)
    t = threading.Thread(target=flood, daemon=True)
    t.start()
    try:
        for to in (nodes[1], nodes[0]):
            m = client.migrate("rabbitflood", to, strategy="cold").wait(timeout=180)
            assert m.state.value == "done", m.errors
    finally:
        stop.set()
        t.join(10)
    before = max(ticks(info["log"]))
    wait_for(lambda: max(ticks(info["log"])) > before + 3)
    assert_went_on(ticks(info["log"]), before)
    assert pushed[0] >= 2 * len(AMQP_BAD)
    wait_for(lambda: int(r.get(DEAD_COUNT) or 0) - start >= pushed[0], timeout=30)
    # no Celery worker of either node died or was restarted
    assert {n: celery_workers(cluster, n) for n in nodes} == workers
    entries = [json.loads(e) for e in r.lrange(DEAD_LETTERS, 0, pushed[0] - 1)]
    assert {e["queue"] for e in entries} == set(queues)
    assert all(e["why"] and e["raw_b64"] for e in entries)
    client.kill("rabbitflood")
