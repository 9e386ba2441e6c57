"""Streamed pages for runc containers: a cold dump's pages go to the destination during the dump.

``runc checkpoint`` takes no page-server socket, only ``--page-server
ADDR:PORT``, which its CRIU dials. So the source opens a loopback port for
that one connection and splices it into the :class:`Relay` of
:mod:`workers.dataplane.pagestream` (ferry's token, BLAKE3 on both ends, the
bandwidth budget) toward the destination's CRIU page server, as the criu
runtime's dump does with its socket.

runc's checkpoint has no ``--leave-stopped``, and once the pages have gone the
source has no images to restore from: so the container is paused first (``runc
pause``, the cgroup freezer) and checkpointed with ``--leave-running``. It stays
paused on the source, the copy a rollback resumes (``runc resume``), until the
cleanup after the point of no return deletes it.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

from workers.dataplane.pagestream import Relay
from workers.errors import PermanentError, TransferError
from workers.records import DumpStats, PagesTarget

BUFFER = 1 << 20
ACCEPT_S = 60.0  # how long runc may take to start its CRIU and dial


def checkpoint(
    runc: list[str],
    name: str,
    images: Path,
    target: PagesTarget,
    dump: Callable[[list[str]], DumpStats],
) -> DumpStats:
    """Pause ``name`` and ``dump`` it (``runc checkpoint`` with these args) into ``images``,
    its pages streamed to ``target``; it stays paused here. A failed dump resumes it.

    The stream is admitted (the destination's page server up) before the pause, so
    that wait is outside the freeze."""
    relay, paused_at = Relay(target), 0.0
    args = ["--image-path", str(images), "--work-path", str(images), "--leave-running"]
    try:
        with relay as fd, bridge(fd) as port:
            began = time.monotonic()
            call(runc, "pause", name)
            paused_at = began
            stats = dump([*args, "--page-server", f"127.0.0.1:{port}"])
    except BaseException:
        if paused_at:
            call(runc, "resume", name)
        raise
    frozen_ms = (time.monotonic() - paused_at) * 1000  # from the pause: CRIU found it frozen
    return replace(
        stats,
        frozen_ms=frozen_ms - stats.freezing_ms,
        wall_ms=frozen_ms,
        pages=relay.stats,
    )


def call(runc: list[str], verb: str, name: str) -> None:
    """``runc pause|resume NAME``; PermanentError with what runc said when it fails."""
    out = subprocess.run(
        [*runc, verb, name], capture_output=True, text=True, timeout=60, check=False
    )
    if out.returncode != 0:
        raise PermanentError(f"runc {verb} {name}: {out.stderr.strip()[-300:]}")


@contextlib.contextmanager
def bridge(relay_fd: int) -> Iterator[int]:
    """A loopback port (yielded) whose first connection is spliced to ``relay_fd`` both ways.

    The block is where runc runs; leaving it waits for both directions to end
    (CRIU's end-of-stream, then the page server's last reply) and closes all.
    """
    relay = socket.socket(fileno=socket.dup(relay_fd))
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(ACCEPT_S)
    pumps: list[threading.Thread] = []
    failed: list[BaseException] = []

    def serve() -> None:
        try:
            conn, _ = server.accept()
        except OSError as exc:
            failed.append(exc)
            return
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for src, dst in ((conn, relay), (relay, conn)):
            pump = threading.Thread(target=_pump, args=(src, dst), daemon=True, name="runc-pages")
            pump.start()
            pumps.append(pump)
        for pump in pumps:
            pump.join()
        conn.close()

    accepting = threading.Thread(target=serve, daemon=True, name="runc-pages-accept")
    accepting.start()
    try:
        yield server.getsockname()[1]
    finally:
        server.close()  # an accept still waiting (runc failed before it dialled) ends now
        accepting.join(timeout=ACCEPT_S)
        relay.close()
    if failed and not pumps:
        raise TransferError(f"pages stream: runc's CRIU never dialled its page server: {failed}")


def _pump(src: socket.socket, dst: socket.socket) -> None:
    """``src``'s bytes into ``dst`` until ``src`` ends; then ``dst`` ends its writing."""
    buf = memoryview(bytearray(BUFFER))
    with contextlib.suppress(OSError):
        while n := src.recv_into(buf):
            dst.sendall(buf[:n])
    with contextlib.suppress(OSError):
        dst.shutdown(socket.SHUT_WR)
