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
resumes the source's tree, and the migration rolls back).
"""

from __future__ import annotations

import contextlib
import socket
import threading
from pathlib import Path

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
    """Splice an admitted lazy session on ``conn`` to the page server of the lazy dump
    in ``images``; return the bytes it sent the destination.

    PermanentError (before ``ready``) when no lazy dump serves there.
    """
    try:
        port = int((images / PORT_FILE).read_text())
        local = socket.create_connection((LOOPBACK, port), timeout=_ADMIT_S)
    except (OSError, ValueError) as exc:
        raise PermanentError(f"no post-copy page server for {images.parent.name}: {exc}") from exc
    sent = [0]
    back = threading.Thread(target=_pump, args=(conn, local, None), daemon=True, name="ferry-lazy")
    try:
        local.settimeout(None)
        local.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        wire.send_frame(conn, {"type": "ready"})
        conn.settimeout(None)  # the destination may be quiet while its tree runs
        back.start()
        _pump(local, conn, sent)  # until the page server has closed
        back.join(timeout=_LINGER_S)
    finally:
        for sock in (conn, local):  # wakes a pump stuck on a silent destination
            _shut(sock, socket.SHUT_RDWR)
        if back.is_alive():
            back.join()
        local.close()
    return sent[0]


def hang_up(images: Path) -> None:
    """Connect to the page server of the lazy dump in ``images`` and hang up at once, which
    ends a dump whose destination never came; nothing if it is gone already."""
    with contextlib.suppress(OSError, ValueError):
        port = int((images / PORT_FILE).read_text())
        socket.create_connection((LOOPBACK, port), timeout=2).close()


def _pump(src: socket.socket, dst: socket.socket, counted: list[int] | None) -> None:
    """``src``'s bytes to ``dst``; at ``src``'s end ``dst`` hears it (half-close), and
    a broken end cuts both directions."""
    buf = memoryview(bytearray(_BUFFER))
    try:
        while n := src.recv_into(buf):
            dst.sendall(buf[:n])
            if counted is not None:
                counted[0] += n
    except OSError:
        for sock in (src, dst):
            _shut(sock, socket.SHUT_RDWR)
        return
    _shut(dst, socket.SHUT_WR)


def _shut(sock: socket.socket, how: int) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(how)
