"""Where the broker, the result backend and the state store live, decided from what is set.

Pure: the three configured URLs in (empty: not set), the URLs to use out, or a
BadRequest that names the missing setting. One rule keeps a cluster from
splitting by accident: whatever is set is shared by every process that has it
set, so what is not set follows it. Only when neither the broker nor the state
store is set does a process use the embedded Redis of its own state dir.

>>> e = plan(broker="redis://head:6379/0")
>>> e.redis, e.backend, e.embedded
('redis://head:6379/0', 'redis://head:6379/0', False)
>>> plan(broker="redis+socket:///run/ferry/redis.sock").redis
'unix:///run/ferry/redis.sock'
>>> plan(redis="unix:///run/r.sock").broker
'redis+socket:///run/r.sock'
>>> plan(broker="amqp://guest@head//")
Traceback (most recent call last):
...
workers.errors.BadRequest: FERRY_BROKER_URL is RabbitMQ, where ferry cannot keep its records: set FERRY_REDIS_URL to the cluster's Redis
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from workers.errors import BadRequest

# URL schemes of a Redis: kombu (Celery's broker and backend) and redis-py spell a
# unix socket differently, the TCP ones alike.
KOMBU_SOCKET, REDIS_SOCKET = "redis+socket", "unix"
TCP_REDIS = ("redis", "rediss")


@dataclass(frozen=True)
class Endpoints:
    """The URLs a ferry process uses; ``embedded``: all three are the state dir's own Redis."""

    broker: str
    backend: str
    redis: str
    embedded: bool


def is_redis(url: str) -> bool:
    return urlsplit(url).scheme in (*TCP_REDIS, KOMBU_SOCKET, REDIS_SOCKET)


def as_store(url: str) -> str:
    """A Redis URL as redis-py (the state store) takes it."""
    return _rescheme(url, KOMBU_SOCKET, REDIS_SOCKET)


def as_kombu(url: str) -> str:
    """A Redis URL as Celery (broker, result backend) takes it."""
    return _rescheme(url, REDIS_SOCKET, KOMBU_SOCKET)


def _rescheme(url: str, old: str, new: str) -> str:
    # by hand: urlunsplit would drop the empty host of "unix:///path"
    return new + url[len(old) :] if urlsplit(url).scheme == old else url


def plan(
    broker: str = "", backend: str = "", redis: str = "", embedded_sock: str = ""
) -> Endpoints:
    """The endpoints for these settings.

    ``embedded_sock``: the state dir's embedded Redis socket, used only when
    neither the broker nor the state store is set (then pass it; otherwise it
    is not looked at, and may be empty).
    """
    if redis and not is_redis(redis):
        raise BadRequest(
            "FERRY_REDIS_URL must be a Redis URL (redis://, rediss:// or unix://), "
            f"not {urlsplit(redis).scheme}://"
        )
    if not broker and not redis:
        if not embedded_sock:
            raise BadRequest("neither FERRY_BROKER_URL nor FERRY_REDIS_URL is set")
        sock = f"{KOMBU_SOCKET}://{embedded_sock}"
        return Endpoints(sock, backend or sock, as_store(sock), embedded=True)
    if not redis:
        if not is_redis(broker):
            scheme = urlsplit(broker).scheme
            kind = "RabbitMQ" if scheme.startswith(("amqp", "pyamqp")) else f"{scheme}://"
            # the URL itself is not repeated: it may carry a password
            raise BadRequest(
                f"FERRY_BROKER_URL is {kind}, where ferry cannot keep its records: "
                "set FERRY_REDIS_URL to the cluster's Redis"
            )
        redis = as_store(broker)
    broker = broker or as_kombu(redis)
    return Endpoints(broker, backend or as_kombu(redis), redis, embedded=False)
