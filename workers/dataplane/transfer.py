"""ferry's transfer service: a migration's files, node to node, verified end to end.

:class:`TransferServer` runs on every node and receives; :func:`send_files`
sends, compressed when that makes it faster. The frames are in
:mod:`workers.dataplane.wire`; a session on the receiving side is
:mod:`workers.dataplane.receiver`, where bytes land is :mod:`workers.dataplane.landing`, and the
sending side is :mod:`workers.dataplane.sender`.
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import logging
import os
import random
import socket
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from workers.criu.log import PipedLog
from workers.dataplane import sender, wire
from workers.dataplane.gate import Gate, GateLimits
from workers.dataplane.receiver import Receiver
from workers.dataplane.sender import COMPRESSORS, MIN_COMPRESS, SendStats
from workers.dataplane.throttle import Budget, TokenBucket
from workers.errors import BadRequest

__all__ = [
    "GateLimits",
    "SendStats",
    "TokenBucket",
    "TransferServer",
    "send_files",
]

log = logging.getLogger(__name__)

_TICK_S = 0.2  # how often an idle server looks for expired partials


class TransferServer:
    """Receives files that :func:`send_files` sends, one thread per connection.

    A file lands in ``root/<migration>/<subdir>/<name>`` only once its size and
    BLAKE3 digest match; each connection needs a fresh token for this node and
    that migration. A connection silent for ``stall_timeout_s`` is dropped. The
    bytes of a file cut off mid-way are kept ``resume_window_s`` for the
    sender to resume, then deleted. ``fsync`` makes each landed file durable.
    Connections are admitted by a :class:`workers.dataplane.gate.Gate` with
    ``limits``: a few seconds to present a valid token, a pool for those still
    without one (and a share of it per address), and ``max_sessions`` slots
    that only authenticated transfers take; beyond those, new ones are told to retry.
    ``page_server`` (:meth:`workers.criu.adapter.Criu.page_server`) serves pages
    sessions (:mod:`workers.dataplane.pagestream`); without it they are refused.
    ``lazy_root`` (this node's images dir) serves lazy sessions: a post-copy
    destination pulling pages from a lazy dump (:mod:`workers.dataplane.lazylink`).
    ``failpoints``: the fault suite's control file (workers.failpoints); None in production.
    """

    def __init__(
        self,
        root: Path,
        secret: bytes,
        node: str,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        stall_timeout_s: float = 30.0,
        resume_window_s: float = 600.0,
        fsync: bool = False,
        limits: GateLimits | None = None,
        page_server: Callable[[Path, int], PipedLog] | None = None,
        lazy_root: Path | None = None,
        failpoints: Path | None = None,
    ) -> None:
        self._bind = (host, port)
        self.gate = Gate(limits or GateLimits())
        self._receiver = Receiver(
            Path(root),
            secret,
            node,
            stall_timeout_s=stall_timeout_s,
            resume_window_s=resume_window_s,
            fsync=fsync,
            page_server=page_server,
            lazy_root=lazy_root,
            failpoints=failpoints,
        )
        self._listener: socket.socket | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._sessions: dict[socket.socket, threading.Thread] = {}
        self._acceptor: threading.Thread | None = None

    def start(self) -> None:
        """Start listening and serving in background threads."""
        self._receiver.open()
        self._listener = socket.create_server(self._bind, backlog=256)
        self._listener.settimeout(_TICK_S)
        # Daemon threads: a forgotten stop() must not keep the worker process alive.
        self._acceptor = threading.Thread(
            target=self._accept_loop, name="ferry-accept", daemon=True
        )
        self._acceptor.start()

    @property
    def address(self) -> tuple[str, int]:
        """The (host, port) the server listens on."""
        if self._listener is None:
            raise RuntimeError("TransferServer.address read before start()")
        host, port = self._listener.getsockname()[:2]
        return str(host), int(port)

    def stop(self) -> None:
        """Stop serving, cut open connections, delete partial files."""
        self._stopping.set()
        if self._acceptor is not None:
            self._acceptor.join()
        if self._listener is not None:
            self._listener.close()
        with self._lock:
            sessions = dict(self._sessions)
        for conn, thread in sessions.items():
            _shutdown(conn)
            thread.join()
        self._receiver.close()

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stopping.is_set():
            now = time.monotonic()
            self._receiver.landing.sweep(now)
            self.gate.sweep(now)
            try:
                conn, peer = self._listener.accept()
            except TimeoutError:
                continue
            except OSError as exc:
                log.warning("data plane: accept failed: %s", exc)
                time.sleep(_TICK_S)
                continue
            thread = threading.Thread(
                target=self._serve, args=(conn, peer), name="ferry-recv", daemon=True
            )
            self.gate.enter(conn, str(peer[0]), time.monotonic())
            with self._lock:
                self._sessions[conn] = thread
            thread.start()

    def refusals(self) -> dict[str, int]:
        """Connections cut or refused before a valid token (or for lack of a slot), by reason."""
        return self.gate.counts()

    def _serve(self, conn: socket.socket, peer: tuple[str, int]) -> None:
        try:
            self._receiver.serve(conn, peer, self.gate)
        finally:
            self.gate.leave(conn)
            with self._lock:
                self._sessions.pop(conn, None)
            conn.close()


def _shutdown(conn: socket.socket) -> None:
    with contextlib.suppress(OSError):
        conn.shutdown(socket.SHUT_RDWR)


def send_files(
    address: tuple[str, int],
    token_factory: Callable[[], str],
    migration: str,
    files: Sequence[tuple[Path, str]],
    *,
    subdir: str = "images",
    bandwidth_bps: float | None = None,
    progress: Callable[[int, int], None] | None = None,
    timeout_s: float = 30,
    retries: int = 3,
    bucket: Budget | None = None,
    compression: str = "none",
) -> SendStats:
    """:func:`workers.dataplane.sender.send_files`, ``compression`` ``none`` or ``zstd``
    (tasks.core.transport.codec decides which)."""
    if compression not in wire.CODECS:
        raise BadRequest(f"unknown compression {compression!r}: use none or zstd")
    return sender.send_files(
        address,
        token_factory,
        migration,
        files,
        subdir=subdir,
        bandwidth_bps=bandwidth_bps,
        progress=progress,
        timeout_s=timeout_s,
        retries=retries,
        bucket=bucket,
        codec=compression,
    )


def compressor_bps() -> float:
    """Bytes per second this node compresses one transfer at (a core hashes and feeds the socket)."""
    return compression_speed() * max(1, COMPRESSORS - 1)


@functools.cache
def compression_speed() -> float:
    """Bytes per second one thread compresses, measured once per process.

    The sample is text-like (random words): slower for zstd than memory pages
    of zeros or of random bytes, so the estimate errs toward not compressing.
    """
    rng = random.Random(0)
    words = [rng.randbytes(rng.randint(2, 9)).hex().encode() for _ in range(2000)]
    sample = b" ".join(rng.choices(words, k=1 << 18))[: 2 * wire.CHUNK_PLAIN]
    best = float("inf")
    for _ in range(3):  # the best of three: a busy moment makes one slow, never fast
        started = time.perf_counter()
        for at in range(0, len(sample), wire.CHUNK_PLAIN):
            wire.compress(sample[at : at + wire.CHUNK_PLAIN])
        best = min(best, time.perf_counter() - started)
    return len(sample) / best


def sample_ratio(paths: Sequence[Path], samples: int = 8, length: int = 128 << 10) -> float:
    """Compressed over plain size of ``samples`` pieces spread over the files worth compressing."""
    try:
        sizes = [(p, p.stat().st_size) for p in paths]
    except OSError:
        return 1.0  # the send will say what is wrong with the file
    big = [(p, n) for p, n in sizes if n >= MIN_COMPRESS]
    total = sum(n for _, n in big)
    if not total:
        return 1.0
    plain = packed = 0
    for k in range(samples):
        at = total * k // samples  # the k-th point of all these files laid end to end
        for path, size in big:
            if at < size:
                try:
                    with path.open("rb") as f:
                        data = os.pread(f.fileno(), min(length, size - at), at)
                except OSError:
                    return 1.0
                plain, packed = plain + len(data), packed + len(wire.compress(data))
                break
            at -= size
    return packed / plain if plain else 1.0


def is_loopback(host: str) -> bool:
    """Whether ``host`` is this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
