"""Post-copy's pages behind ferry's token: the destination's ``criu lazy-pages`` reaches
the source's page server only through the source's transfer service.

A lazy dump's page server (``criu dump --lazy-pages``) serves the first
connection to its port, whoever makes it, so ferry binds it to the source's
loopback, where only the node itself can reach it. The destination dials the
source's transfer service and asks for a lazy session with a fresh token for
the migration::

    destination                                source's receiver
    lazy {v, token, migration, subdir}    ->   the token checked as for files
                                               (this node, expiry, nonce never
                                               used), the dump's port read from
                                               its images dir
                                          <-   ready {}             (or error)
    CRIU's lazy protocol, raw, both ways  <->  spliced to 127.0.0.1:<port>

and hands the connected socket to ``criu lazy-pages --ps-socket``
(:meth:`workers.criu.adapter.Criu.start_lazy_pages`): nothing listens on the
destination either. A refused token never reaches the page server, which
still waits for the destination's own connection.

The session lasts as long as the degraded period: until the page server has
sent every page and closed, or either end goes away (then CRIU's dump fails,
resumes the source's tree, and the migration rolls back). The source splices
it in a process of its own, so a worker restarted meanwhile does not cut it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
import socket
from pathlib import Path

from workers import procs
from workers.criu.lazydump import PORT_FILE
from workers.dataplane import wire
from workers.errors import PermanentError, TransferError

LOOPBACK = "127.0.0.1"  # where a lazy dump's page server listens
_BUFFER = 1 << 20
_ADMIT_S = 10.0  # how long the source may take to admit the session
_LINGER_S = 30.0  # how long the destination may take to close after the page server did


def open_lazy(address: tuple[str, int], token: str, migration: str, subdir: str) -> socket.socket:
    """A connection to the page server of ``migration``'s lazy dump in ``subdir`` on the
    source at ``address``, admitted by its transfer service; blocking, for CRIU to use.

    Raises TransferError if the source does not answer, or what it replied
    (TokenError, PermanentError, ...).
    """
    host, port = address
    try:
        sock = socket.create_connection(address, timeout=_ADMIT_S)
    except OSError as exc:
        raise TransferError(f"lazy pages: {host}:{port} does not answer: {exc}") from exc
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        request = {"type": "lazy", "v": wire.VERSION, "token": token}
        wire.send_frame(sock, {**request, "migration": migration, "subdir": subdir})
        wire.expect(wire.recv_frame(sock), "ready")
    except BaseException:
        sock.close()
        raise
    sock.settimeout(None)  # CRIU's, from here: it waits on faults as long as it must
    return sock


def serve_lazy(conn: socket.socket, images: Path) -> int:
    """Splice an admitted lazy session on ``conn`` to the page server of the lazy dump in
    ``images``, in a process of its own; return its pid.

    The splice must outlive this process: a worker restarted mid post-copy
    (``KillMode=process``) leaves its CRIU dumps and lazy-pages daemons running,
    and the pages must go on crossing between them. The child only calls the
    kernel (no locks, no logging) and exits when both ends have closed, when
    one breaks, or ``_LINGER_S`` after the page server closed if the
    destination never does; the node's supervisor reaps it (its subreaper).
    PermanentError (before ``ready``) when no lazy dump serves there.
    """
    try:
        port = int((images / PORT_FILE).read_text())
        local = socket.create_connection((LOOPBACK, port), timeout=_ADMIT_S)
    except (OSError, ValueError) as exc:
        raise PermanentError(f"no post-copy page server for {images.parent.name}: {exc}") from exc
    try:
        local.settimeout(None)
        local.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        wire.send_frame(conn, {"type": "ready"})
        conn.settimeout(None)  # the destination may be quiet while its tree runs
        pid = os.fork()
        if pid == 0:  # pragma: no cover (the child; its work is checked end to end)
            status = 0
            try:
                procs.detach(conn.fileno(), local.fileno())
                _splice(conn, local)
            except BaseException:
                status = 1
            os._exit(status)
    finally:
        local.close()  # this process's copy: the child holds its own
    return pid


def hang_up(images: Path) -> None:
    """Connect to the page server of the lazy dump in ``images`` and hang up at once, which
    ends a dump whose destination never came; nothing if it is gone already."""
    with contextlib.suppress(OSError, ValueError):
        port = int((images / PORT_FILE).read_text())
        socket.create_connection((LOOPBACK, port), timeout=2).close()


def _splice(a: socket.socket, b: socket.socket) -> None:
    """Both directions between ``a`` and ``b``, in one thread and through the kernel
    (splice(2) via a pipe per direction: no copy in this process): an end's close is
    passed on (half-close), a broken end ends it, and so does ``_LINGER_S`` of silence
    once one end has closed."""
    peer = {a.fileno(): b, b.fileno(): a}
    ends = {a.fileno(): a, b.fileno(): b}
    pipes = {fd: os.pipe() for fd in ends}
    for _, pw in pipes.values():
        with contextlib.suppress(OSError):  # up to fs.pipe-max-size; 64 KiB will do
            fcntl.fcntl(pw, fcntl.F_SETPIPE_SZ, _BUFFER)
    poll = select.poll()
    for fd in ends:
        poll.register(fd, select.POLLIN)
    reading = set(ends)
    while reading:
        ready = poll.poll(None if len(reading) == 2 else _LINGER_S * 1000)
        if not ready:
            return  # the other end never closed
        for fd, _ in ready:
            if fd not in reading:
                continue
            out, (pr, pw) = peer[fd], pipes[fd]
            try:
                n = os.splice(fd, pw, _BUFFER)
                if n:
                    while n:  # what the pipe holds, on to the other end
                        n -= os.splice(pr, out.fileno(), n)
                    continue
                out.shutdown(socket.SHUT_WR)
            except OSError:
                return
            poll.unregister(fd)
            reading.discard(fd)
