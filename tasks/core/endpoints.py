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
>>> plan(broker="sentinel://s1:26379,s2:26379,s3:26379/ferry").backend
'sentinel://s1:26379,s2:26379,s3:26379/ferry'
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
SENTINEL = "sentinel"  # Redis behind Sentinel: ferry's own form, see parse_sentinel


@dataclass(frozen=True)
class Endpoints:
    """The URLs a ferry process uses; ``embedded``: all three are the state dir's own Redis."""

    broker: str
    backend: str
    redis: str
    embedded: bool


def is_redis(url: str) -> bool:
    return urlsplit(url).scheme in (*TCP_REDIS, KOMBU_SOCKET, REDIS_SOCKET, SENTINEL)


@dataclass(frozen=True)
class Sentinels:
    """A Redis found through its Sentinels: where they listen, the master's name,
    the database and the master's credentials (``userinfo``, as written)."""

    hosts: tuple[tuple[str, int], ...]
    master: str
    db: int = 0
    userinfo: str = ""

    @property
    def kombu(self) -> str:
        """The URL as Celery's sentinel transport and result backend take it
        (one ``sentinel://`` per Sentinel, ``;`` between; the master's name goes
        in the transport options).

        >>> parse_sentinel("sentinel://:pw@a:1,b:2/ferry/3").kombu
        'sentinel://:pw@a:1/3;sentinel://:pw@b:2/3'
        """
        auth = f"{self.userinfo}@" if self.userinfo else ""
        return ";".join(f"sentinel://{auth}{h}:{p}/{self.db}" for h, p in self.hosts)


def parse_sentinel(url: str) -> Sentinels:
    """``sentinel://[USER:PASSWORD@]HOST[:PORT][,HOST[:PORT]...]/MASTER[/DB]``.

    >>> parse_sentinel("sentinel://ferry:pw@s1,s2:26380,s3/ferry/2")
    Sentinels(hosts=(('s1', 26379), ('s2', 26380), ('s3', 26379)), master='ferry', db=2, userinfo='ferry:pw')
    >>> parse_sentinel("sentinel://s1:26379")
    Traceback (most recent call last):
    ...
    workers.errors.BadRequest: a sentinel:// URL names its master: sentinel://HOST:PORT[,HOST:PORT...]/MASTER[/DB]
    """
    form = "sentinel://HOST:PORT[,HOST:PORT...]/MASTER[/DB]"
    parts = urlsplit(url)
    if parts.scheme != SENTINEL:
        raise BadRequest(f"not a sentinel:// URL: {parts.scheme}://")
    userinfo, _, where = parts.netloc.rpartition("@")
    path = [p for p in parts.path.split("/") if p]
    if not path or len(path) > 2:
        raise BadRequest(f"a sentinel:// URL names its master: {form}")
    hosts = []
    for h in where.split(","):
        host, _, port = h.rpartition(":") if ":" in h else (h, "", "26379")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise BadRequest(f"bad Sentinel address {h!r} in a sentinel:// URL: {form}")
        hosts.append((host, int(port)))
    if len(path) == 2 and not path[1].isdigit():
        raise BadRequest(f"bad database {path[1]!r} in a sentinel:// URL: {form}")
    return Sentinels(tuple(hosts), path[0], int(path[1]) if len(path) == 2 else 0, userinfo)


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
    for url in (broker, backend, redis):
        if urlsplit(url).scheme == SENTINEL:
            parse_sentinel(url)  # a bad one is refused now, not at the first failover
    if redis and not is_redis(redis):
        raise BadRequest(
            "FERRY_REDIS_URL must be a Redis URL (redis://, rediss://, unix:// or sentinel://), "
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
