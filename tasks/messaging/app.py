"""The Celery app: JSON only, late acks, capped redelivery, per-node queues.

Queues: ``node.<name>`` (a node's ordinary work), ``node.<name>.urgent`` (the
steps inside a container's freeze window, served by a slot nothing else may
occupy), ``ferry.control`` (the coordinator: starts and cancels) and
``ferry.control.ticks`` (the evacuation runner's ticks, which the coordinator
consumes too: a start never waits behind them).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from tasks.config.broker import ssl_options
from tasks.config.settings import Settings
from tasks.core.endpoints import SENTINEL, parse_sentinel
from tasks.core.migration import Migration, Phase, Send
from tasks.messaging.signing import enable_signing
from tasks.store.evacuations import Records
from workers.errors import BadRequest

if TYPE_CHECKING:
    from celery import Celery

CONTROL_QUEUE = "ferry.control"
TICK_QUEUE = "ferry.control.ticks"
COORDINATOR_QUEUES = f"{CONTROL_QUEUE},{TICK_QUEUE}"  # what `ferry coordinator` consumes
EVACUATE_TICK = "ferry.control.evacuate_tick"
DEAD_LETTERS_AT = "ferry_dead_letters_at"  # app.conf: (broker URL, state Redis URL)


def node_queue(node: str, urgent: bool = False) -> str:
    return f"node.{node}.urgent" if urgent else f"node.{node}"


def make_app(settings: Settings) -> Celery:
    """A Celery app for resolved ``settings`` (see tasks.config.broker.resolve)."""
    from celery import Celery  # noqa: PLC0415 (0.1 s to import: `ferry ps` and `nodes` never need it)

    from tasks.messaging.transport import install  # noqa: PLC0415 (kombu, with Celery)

    install()  # a bad message on a queue is moved aside, never delivered

    broker, backend = settings.broker_url, settings.result_backend
    app = Celery(
        "ferry", broker=kombu_url(broker), backend=kombu_url(backend), set_as_current=False
    )
    transport = {
        # Longer than the longest phase: an unacked task is redelivered only
        # after this, so a slow dump is never handed to a second worker.
        "visibility_timeout": settings.visibility_timeout_s,
        # redis-py >= 8 defaults socket_timeout to 5 s, which would cut the
        # transport's blocking BRPOP short; say what we want instead.
        "socket_timeout": 30,
        "socket_connect_timeout": 5,
        "health_check_interval": 25,
    }
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        event_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        task_acks_late=True,
        # A task whose worker process died is not put back: a phase that
        # killed its worker (OOM) would otherwise loop forever. The record's
        # delivery counter and the coordinator's recovery take over instead.
        task_reject_on_worker_lost=False,
        worker_prefetch_multiplier=1,
        broker_transport_options=transport | sentinel_options(broker),
        result_backend_transport_options=transport | sentinel_options(backend),
        broker_connection_retry_on_startup=True,
        worker_send_task_events=True,
        task_send_sent_event=True,
        task_track_started=True,
        task_default_queue=CONTROL_QUEUE,
        task_create_missing_queues=True,
        result_expires=7 * 86400,
        result_extended=True,
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
        # a message Celery cannot take as a task is set aside, not dropped
        worker_consumer="tasks.messaging.consumer:GuardedConsumer",
    )
    app.conf[DEAD_LETTERS_AT] = (broker, settings.redis_url)
    # Kombu and Celery read TLS options from a rediss:// URL themselves; Flower
    # reads only these settings (docs/security.md).
    app.conf.broker_use_ssl = ssl_options(settings.broker_url) or False
    app.conf.redis_backend_use_ssl = ssl_options(settings.result_backend) or False
    if settings.signing_key:
        enable_signing(
            app,
            Path(settings.signing_key),
            Path(settings.signing_cert),
            Path(settings.signing_certs),
        )
    return app


def kombu_url(url: str) -> str:
    """``url`` as Celery takes it: a ``sentinel://`` one in Kombu's form."""
    return parse_sentinel(url).kombu if urlsplit(url).scheme == SENTINEL else url


def sentinel_options(url: str) -> dict[str, Any]:
    """The transport options a ``sentinel://`` broker or backend needs: its master's name."""
    return {"master_name": parse_sentinel(url).master} if urlsplit(url).scheme == SENTINEL else {}


def worker_argv(s: Settings, queue: str, name: str, threads: int) -> list[str]:
    """``celery worker`` for one of ferry's daemons: quiet unless ``log_level`` asks
    for INFO or DEBUG (then Celery's banner and every task). Celery's warning
    about running as root is dropped: CRIU needs root, and the messages are
    JSON, signed, never pickle.
    """
    warnings.filterwarnings("ignore", message="You're running the worker with superuser")
    level = s.log_level.upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise BadRequest(f"log_level {s.log_level!r}: DEBUG, INFO, WARNING or ERROR")
    quiet = [] if level in ("DEBUG", "INFO") else ["--quiet"]
    return [
        *quiet,
        "worker",
        "-Q",
        queue,
        "-n",
        name,
        "-P",
        "threads",
        "-c",
        str(threads),
        "-E",
        "--without-gossip",
        "--without-mingle",
        "-l",
        level,
    ]


def dispatch(app: Celery, mid: str, sends: list[Send]) -> None:
    """Send each step to its node's queue."""
    for s in sends:
        app.send_task(
            f"ferry.node.{s.phase.value}",
            args=(mid, s.step),
            queue=node_queue(s.node, s.urgent),
            countdown=s.countdown or None,
        )


def tell_evacuation(app: Celery, m: Migration, recs: Records) -> None:
    """``m`` just ended, or passed its point of no return (its evacuation's next move may
    start then): the evacuation's tick takes it in now, not at its next turn. One tick
    queued at a time is enough: it reads what is there when it starts."""
    passed = m.past_no_return and m.phase is Phase.CLEANUP and m.attempt == 1
    if (m.state.final or passed) and m.options.evacuation:
        ask_tick(app, recs, m.options.evacuation)


def ask_tick(app: Celery, recs: Records, eid: str) -> None:
    """Queue a tick of evacuation ``eid`` now, unless one is queued already."""
    if recs.ask_tick(eid):
        app.send_task(EVACUATE_TICK, args=(eid,), queue=TICK_QUEUE)
