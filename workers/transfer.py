"""ferry's transfer service: a migration's files, node to node, verified end to end.

:class:`TransferServer` runs on every node and receives; :func:`send_files`
sends. The frames are in :mod:`workers.wire`; a session on the receiving side
is :mod:`workers.receiver`, where bytes land is :mod:`workers.landing`, and
the sending side is :mod:`workers.sender`.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from pathlib import Path

from workers import wire
from workers.errors import TransferError
from workers.receiver import Receiver
from workers.sender import SendStats, send_files
from workers.throttle import TokenBucket

__all__ = ["SendStats", "TokenBucket", "TransferServer", "send_files"]

log = logging.getLogger(__name__)

_TICK_S = 0.2  # how often an idle server looks for expired partials


class TransferServer:
    """Receives files that :func:`send_files` sends, one thread per connection.

    A file lands in ``root/<migration>/<subdir>/<name>`` only once its size and
    BLAKE3 digest match; each connection needs a fresh token for this node and
    that migration. A connection silent for ``stall_timeout_s`` is dropped. The
    bytes of a file cut off mid-way are kept ``resume_window_s`` for the
    sender to resume, then deleted. ``fsync`` makes each landed file durable.
    Beyond ``max_sessions`` connections at once, new ones are told to retry.
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
        max_sessions: int = 64,
    ) -> None:
        self._bind, self._max_sessions = (host, port), max_sessions
        self._receiver = Receiver(
            Path(root),
            secret,
            node,
            stall_timeout_s=stall_timeout_s,
            resume_window_s=resume_window_s,
            fsync=fsync,
        )
        self._listener: socket.socket | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._sessions: dict[socket.socket, threading.Thread] = {}
        self._acceptor: threading.Thread | None = None

    def start(self) -> None:
        """Start listening and serving in background threads."""
        self._receiver.open()
        self._listener = socket.create_server(self._bind, backlog=64)
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
            self._receiver.landing.sweep(time.monotonic())
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
            with self._lock:
                busy = len(self._sessions) >= self._max_sessions
                if not busy:
                    self._sessions[conn] = thread
            if busy:
                _turn_away(conn, self._max_sessions)
            else:
                thread.start()

    def _serve(self, conn: socket.socket, peer: tuple[str, int]) -> None:
        try:
            self._receiver.serve(conn, peer)
        finally:
            with self._lock:
                self._sessions.pop(conn, None)
            conn.close()


def _turn_away(conn: socket.socket, limit: int) -> None:
    busy = TransferError(f"receiver busy with {limit} transfers; try again")
    try:
        conn.setblocking(False)
        wire.send_frame(conn, wire.error_message(busy))
    except OSError:
        pass
    conn.close()


def _shutdown(conn: socket.socket) -> None:
    try:
        conn.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
