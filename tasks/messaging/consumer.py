"""Celery's worker consumer, guarded: a message it cannot take as a task is set
aside (tasks.messaging.transport.set_aside), never dropped, and never takes the
worker down.

Kombu's Redis transport is guarded below Celery (tasks.messaging.transport); an
AMQP broker delivers its own framing, so what is bad there is the body or the
headers, and Celery sees it first: its consumer logged CRITICAL and acked an
undecodable body (gone, uncounted), rejected an unknown or invalid task (gone:
ferry's queues have no dead-letter exchange), and a task message whose headers
lack what a request needs raised out of the worker's loop. This consumer sends
all of those to the same dead-letter list and count as the Redis guard: beside
a Redis broker's queues, or in the state's Redis with RabbitMQ.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any

import redis
from celery.utils.log import get_logger
from celery.worker.consumer.consumer import Consumer

from tasks.config.broker import broker_client, client_for
from tasks.messaging.app import DEAD_LETTERS_AT
from tasks.messaging.transport import set_aside

log = get_logger(__name__)


class GuardedConsumer(Consumer):  # type: ignore[misc]
    @cached_property
    def _dead_letters(self) -> redis.Redis:
        broker, state = self.app.conf[DEAD_LETTERS_AT]
        return broker_client(broker) or client_for(state)

    def _aside(self, message: Any, why: str) -> None:
        info = message.delivery_info or {}
        queue = info.get("routing_key") or info.get("exchange") or "?"
        body = message.body if isinstance(message.body, bytes | str) else repr(message.body)
        headers = {k: str(v)[:200] for k, v in (message.headers or {}).items()}
        set_aside(self._dead_letters, queue, body, f"{why}; headers {headers}"[:1000])

    def on_decode_error(self, message: Any, exc: Exception) -> None:
        self._aside(message, f"undecodable ({message.content_type}): {exc}")
        message.ack()

    def on_unknown_message(self, body: Any, message: Any) -> None:
        self._aside(message, "not a task message")
        message.reject_log_error(log, self.connection_errors)

    def on_unknown_task(self, body: Any, message: Any, exc: Exception) -> None:
        self._aside(message, f"unknown task: {exc}")
        message.reject_log_error(log, self.connection_errors)

    def on_invalid_task(self, body: Any, message: Any, exc: Exception) -> None:
        self._aside(message, f"invalid task: {exc}")
        message.reject_log_error(log, self.connection_errors)

    def create_task_handler(self, *args: Any) -> Any:
        handle = super().create_task_handler(*args)

        def on_task_received(message: Any) -> Any:
            try:
                return handle(message)
            except self.connection_errors:
                raise  # the broker went away: Celery reconnects
            except Exception as exc:  # noqa: BLE001 (a message must not end the worker's loop)
                self._aside(message, f"{type(exc).__name__}: {exc}")
                message.reject_log_error(log, self.connection_errors)
                return None

        return on_task_received
