"""Kombu's Redis transport, guarded: a message on a ferry queue that is not a
Kombu envelope is moved aside, never handed to Kombu.

Anyone who can write to the broker can ``LPUSH node.a garbage``. Kombu's Redis
transport decodes what BRPOP returns before Celery sees it, so an undecodable
item raised out of the worker's event loop (the worker died; its supervisor
restarted it) and an envelope without a delivery tag dropped the broker
connection. Message signing cannot help: this is before any serializer.

The guard sits in the one place every reply passes: the Redis client that
Kombu's channel creates. A BRPOP reply whose item is not a JSON envelope with
the fields Kombu reads (``properties.delivery_tag``, ``body``) is pushed to
:data:`DEAD_LETTERS` with its queue, its raw bytes and why, counted in
:data:`DEAD_COUNT`, logged (the first and every hundredth), and the channel
sees an empty poll and goes on. :func:`install` makes ``redis://``,
``rediss://``, ``redis+socket://`` and ``sentinel://`` brokers use it in this
process.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from typing import Any

import kombu.transport
import redis
from kombu.transport import redis as kombu_redis

log = logging.getLogger(__name__)

DEAD_LETTERS = "ferry:deadletter"  # newest first, at most KEEP
DEAD_COUNT = "ferry:deadletter:count"
KEEP = 1000


def envelope_problem(raw: bytes | str) -> str | None:
    """Why ``raw`` is not a Kombu envelope this transport can deliver; None if it is.

    >>> envelope_problem(b"garbage")
    'not JSON'
    >>> envelope_problem(b'{"body": "x", "properties": {}}')
    'no properties.delivery_tag'
    >>> envelope_problem(b'{"body": "", "properties": {"delivery_tag": "t"}}') is None
    True
    """
    try:
        payload = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return "not JSON"
    if not isinstance(payload, dict):
        return "not a JSON object"
    props = payload.get("properties")
    if not isinstance(props, dict):
        return "no properties"
    if not isinstance(props.get("delivery_tag"), str | int):
        return "no properties.delivery_tag"
    if not isinstance(props.get("delivery_info", {}), dict):
        return "properties.delivery_info is not an object"
    if not isinstance(payload.get("body", ""), str | type(None)):
        return "body is not a string"
    if not isinstance(payload.get("headers", {}), dict | type(None)):
        return "headers is not an object"
    return None


def set_aside(r: redis.Redis, queue: bytes | str, item: bytes | str, why: str) -> None:
    """Push a bad message from ``queue`` onto :data:`DEAD_LETTERS` with its raw bytes
    and ``why``, count it in :data:`DEAD_COUNT`, log the first and every hundredth."""
    raw = item if isinstance(item, bytes) else item.encode()
    name = queue.decode(errors="replace") if isinstance(queue, bytes) else queue
    entry = {
        "queue": name,
        "why": why,
        "at": time.time(),
        "raw_b64": base64.b64encode(raw[:65536]).decode(),
        "bytes": len(raw),
    }
    try:
        with r.pipeline() as pipe:
            pipe.lpush(DEAD_LETTERS, json.dumps(entry))
            pipe.ltrim(DEAD_LETTERS, 0, KEEP - 1)
            pipe.incr(DEAD_COUNT)
            n = pipe.execute()[-1]
    except redis.RedisError as exc:  # Redis went away: the item is dropped, say so
        log.warning("dropped a bad message from %s (%s): %s", name, why, exc)
        return
    if n == 1 or n % 100 == 0:
        log.warning(
            "moved a bad message from %s aside (%s; %d so far): see the %s list",
            name,
            why,
            n,
            DEAD_LETTERS,
        )


class GuardedRedis(redis.Redis):
    """The client of a guarded channel: moves bad BRPOP items aside."""

    def parse_response(self, connection: Any, command_name: str | bytes, **options: Any) -> Any:
        reply = super().parse_response(connection, command_name, **options)  # type: ignore[no-untyped-call]
        if command_name != "BRPOP" or not reply:
            return reply
        queue, item = reply
        why = envelope_problem(item)
        if why is None:
            return reply
        set_aside(self, queue, item, why)
        return None  # the channel sees an empty poll, and polls again


class _Guarded:
    """A Kombu Redis channel whose client is :class:`GuardedRedis`."""

    def _get_client(self) -> Any:
        client = super()._get_client()  # type: ignore[misc]
        return GuardedRedis if client is redis.Redis else client


class GuardedChannel(_Guarded, kombu_redis.Channel):
    pass


class GuardedTransport(kombu_redis.Transport):
    Channel = GuardedChannel


class GuardedSentinelChannel(_Guarded, kombu_redis.SentinelChannel):
    pass


class GuardedSentinelTransport(kombu_redis.SentinelTransport):
    Channel = GuardedSentinelChannel


def install() -> None:
    """Kombu resolves Redis brokers to :class:`GuardedTransport` from now on."""
    for alias in ("redis", "rediss"):
        kombu.transport.TRANSPORT_ALIASES[alias] = f"{__name__}:GuardedTransport"
    kombu.transport.TRANSPORT_ALIASES["sentinel"] = f"{__name__}:GuardedSentinelTransport"
