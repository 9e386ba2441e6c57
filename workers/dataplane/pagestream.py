"""The pages stream: a dump's pages straight into the destination's CRIU, behind ferry's token.

``criu dump --page-server`` sends pages and pagemaps over a socket to a
``criu page-server``, which writes them as images. A bare page server takes
the first connection to its port, so ferry never opens one. The source's
:class:`Relay` dials the destination's transfer service and asks for a pages
session with a fresh token for the migration::

    relay (source)                              receiver (destination)
    pages {v, token, migration, subdir}    ->
                                           <-   ready {}                 (or error)
    CRIU's bytes, raw, then half-close     ->   <- the page server's replies, each a
                                                   4-byte length and its bytes
                                           <-   a zero length, then
                                                done {bytes, blake3}     (or error)

The receiver checks the token exactly as for files, then starts ``criu
page-server --ps-socket`` on one end of a socketpair (CRIU reuses a connected
socket: no port is listened on) and splices the connection to the other
(:func:`serve_pages`). CRIU's socket is a unix one on both sides, so its corked
last command costs no 200 ms wait with the tree frozen.

Both ends hash what CRIU sent with BLAKE3. Once its page server has exited,
the destination writes its digest to ``ferry-pages.json`` beside the images
and tells the source: ``done`` with its digest, or ``error`` with why its
page server failed (a full disk is NoSpace). The relay fails the dump on an
error or a digest that differs; the source's digest also travels with the
dump's result (the control plane), and the restore refuses images whose
digest differs from it (:func:`check_pages`).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import blake3

from workers.criu.log import PipedLog, explain_text
from workers.dataplane import wire
from workers.dataplane.landing import store_error
from workers.dataplane.throttle import TokenBucket
from workers.errors import CriuError, FerryError, IntegrityError, PermanentError, TransferError
from workers.records import PagesTarget, StreamStats

MARKER = "ferry-pages.json"  # the destination's digest of a finished pages session
BUFFER = 1 << 20
_PROGRESS_S = 0.25
_EXIT_WAIT_S = 30.0  # how long a page server may take to write its last pages and exit
_ADMIT_S = 10.0  # how long the destination may take to admit a session
_LENGTH = struct.Struct(">I")


class Relay:
    """A unix socket for ``criu dump``, carried to the destination's page server.

    ``with Relay(target) as fd`` connects and is admitted (TokenError,
    CapabilityError... as the receiver replies; TransferError if it does not
    answer) before CRIU starts; :attr:`stats` is set once the block ends.
    Leaving the block checks the destination's verdict: its error replaces a
    failed dump's CriuError (chained), and after a dump that succeeded an
    error, a differing digest (IntegrityError) or no verdict at all
    (TransferError) is raised.
    """

    def __init__(self, target: PagesTarget) -> None:
        self._target = target
        self._threads: list[threading.Thread] = []
        self._hasher = blake3.blake3()
        self._sent = 0
        self._first = self._last = 0.0
        self._sending = False  # mid-chunk: waiting on the bandwidth cap or the socket
        self._answered = False  # the destination's page server has answered once
        self._verdict: dict[str, Any] | None = None  # the destination's last frame
        self.stats: StreamStats | None = None

    def __enter__(self) -> int:
        t = self._target
        try:
            self._tcp = socket.create_connection(t.address, timeout=max(t.stall_s, _ADMIT_S))
        except OSError as exc:
            host, port = t.address
            raise TransferError(f"pages stream: {host}:{port} does not answer: {exc}") from exc
        try:
            self._tcp.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            wire.send_frame(
                self._tcp,
                {
                    "type": "pages",
                    "v": wire.VERSION,
                    "token": t.token(),
                    "migration": t.migration,
                    "subdir": t.subdir,
                },
            )
            wire.expect(wire.recv_frame(self._tcp), "ready")
            self._tcp.settimeout(t.stall_s)
        except BaseException:
            self._tcp.close()
            raise
        self._mine, self._criu = socket.socketpair()
        bucket = TokenBucket(t.bandwidth_bps) if t.bandwidth_bps else None
        for target, args in ((self._forward, (bucket,)), (self._backward, ())):
            thread = threading.Thread(target=target, args=args, daemon=True, name="ferry-pages")
            thread.start()
            self._threads.append(thread)
        return self._criu.fileno()

    def __exit__(self, kind: object, failure: BaseException | None, tb: object) -> None:
        self._criu.close()  # CRIU has exited: its end reads EOF, and so does the peer
        for thread in self._threads:
            thread.join(timeout=self._target.stall_s + _EXIT_WAIT_S)
        for sock in (self._mine, self._tcp):
            _shut(sock, socket.SHUT_RDWR)  # wakes a pump stuck on a silent peer
            sock.close()
        self.stats = StreamStats(
            self._sent, self._hasher.hexdigest(), max(0.0, self._last - self._first)
        )
        verdict = self._verdict
        if verdict is not None and verdict.get("type") == "error":
            try:
                wire.raise_error(verdict)
            except FerryError as theirs:
                raise theirs from failure  # why the destination failed, not just a broken pipe
        if failure is not None:
            return
        if verdict is None:
            raise TransferError(
                "pages stream: the destination never said how its page server ended"
            )
        if (verdict.get("type"), verdict.get("bytes"), verdict.get("blake3")) != (
            "done",
            self.stats.bytes,
            self.stats.blake3,
        ):
            raise IntegrityError(
                f"pages stream digest does not match the source's ({verdict.get('bytes')} "
                f"bytes landed, {self.stats.bytes} sent): the dump does not count"
            )

    def _forward(self, bucket: TokenBucket | None) -> None:
        """CRIU's bytes to the destination: hashed, throttled, counted."""
        t, buf = self._target, memoryview(bytearray(BUFFER))
        told, corrupt = 0.0, t.corrupt
        try:
            while n := self._mine.recv_into(buf):
                self._sending = True
                if not self._sent:
                    self._first = time.monotonic()
                chunk = buf[:n]
                self._hasher.update(chunk)
                if corrupt and self._sent + n > BUFFER // 2:  # well into the pages
                    flipped = bytearray(chunk)
                    flipped[n // 2] ^= 0xFF
                    chunk, corrupt = memoryview(flipped), False
                if bucket is not None:
                    for at in range(0, n, bucket.burst):
                        bucket.take(min(bucket.burst, n - at))
                self._tcp.sendall(chunk)  # a peer silent for stall_s raises TimeoutError
                self._sent += n
                self._last = time.monotonic()
                self._sending = False
                if t.progress is not None and self._last - told >= _PROGRESS_S:
                    told = self._last
                    t.progress(self._sent, self._last - self._first)
        except OSError:
            pass  # the destination went away or stalled; CRIU reports the failure
        finally:
            _shut(self._tcp, socket.SHUT_WR)
            _shut(self._mine, socket.SHUT_RD)

    def _backward(self) -> None:
        """The page server's replies to CRIU, then the verdict; a destination silent
        too long ends the stream."""
        try:
            while n := _LENGTH.unpack(self._read(_LENGTH.size))[0]:
                self._mine.sendall(self._read(n))
            _shut(self._mine, socket.SHUT_WR)  # the page server is done: so is CRIU's socket
            (size,) = _LENGTH.unpack(self._read(_LENGTH.size))
            if size > wire.MAX_FRAME:
                raise TransferError(f"pages stream: a verdict of {size} bytes")
            self._verdict = json.loads(self._read(size))
        except (OSError, ValueError, FerryError):
            pass  # no verdict: __exit__ says so if CRIU did not fail first
        _shut(self._mine, socket.SHUT_WR)
        _shut(self._tcp, socket.SHUT_RDWR)

    def _read(self, n: int) -> bytes:
        """Exactly ``n`` bytes from the destination, however long the forward pump waits."""
        buf = memoryview(bytearray(n))
        got, heard = 0, time.monotonic()
        while got < n:
            try:
                k = self._tcp.recv_into(buf[got:])
            except TimeoutError:
                quiet = time.monotonic() - max(heard, self._last)
                # until its first answer the destination's page server is still starting:
                # that is admission, not a stall
                patience = self._target.stall_s if self._answered else _ADMIT_S
                if self._sending or quiet < patience:
                    continue  # the forward pump watches a stalled peer itself
                raise
            if not k:
                raise TransferError("pages stream: the destination hung up")
            got, heard = got + k, time.monotonic()
        self._answered = True
        return bytes(buf)


def serve_pages(
    conn: socket.socket, images: Path, page_server: Callable[[Path, int], PipedLog]
) -> int:
    """Run one admitted pages session on ``conn``: CRIU's page server writes into ``images``.

    Earlier pages in ``images`` (a dump that died half-way) are dropped first.
    Writes :data:`MARKER` (bytes, BLAKE3, the page server's exit status) once
    the page server has exited; returns the bytes received.
    """
    for old in (*images.glob("pages-*.img"), *images.glob("pagemap-*.img"), images / MARKER):
        old.unlink(missing_ok=True)
    ours, theirs = socket.socketpair()
    try:
        proc = page_server(images, theirs.fileno())
    finally:
        theirs.close()
    hasher, got = blake3.blake3(), [0]

    def forward() -> None:  # the source's bytes to the page server, hashed
        buf = memoryview(bytearray(BUFFER))
        try:
            while n := conn.recv_into(buf):
                hasher.update(buf[:n])
                got[0] += n
                ours.sendall(buf[:n])
        except OSError:
            proc.kill()  # a stalled or broken source: the page server must not wait forever
        _shut(ours, socket.SHUT_WR)

    thread = threading.Thread(target=forward, daemon=True, name="ferry-pages-in")
    thread.start()
    try:
        while data := ours.recv(64 << 10):
            conn.sendall(_LENGTH.pack(len(data)) + data)
    except OSError:
        proc.kill()
    try:
        status = proc.wait(timeout=_EXIT_WAIT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        status = proc.wait()
    _shut(conn, socket.SHUT_RD)  # the source's forward pump stops if it still runs
    thread.join()
    ours.close()
    verdict: dict[str, object] = {"type": "done", "bytes": got[0], "blake3": hasher.hexdigest()}
    if status != 0:
        verdict = wire.error_message(_failure(proc.text(), status))
    tmp = images / f".{MARKER}.tmp"
    try:
        tmp.write_text(json.dumps({"bytes": got[0], "blake3": hasher.hexdigest(), "exit": status}))
        os.replace(tmp, images / MARKER)
    except OSError as exc:  # a full disk, most likely: no marker, so no restore either
        tmp.unlink(missing_ok=True)
        if status == 0:
            verdict = wire.error_message(store_error(f"{images / MARKER}", exc))
    try:
        conn.sendall(_LENGTH.pack(0))
        wire.send_frame(conn, verdict)
    except OSError:
        pass  # the source is gone: its dump failed already
    return got[0]


def _failure(log: str, status: int) -> FerryError:
    """Why a page server exited with ``status``, from its ``log``: NoSpace for a full disk."""
    code, detail = explain_text(log)
    # CRIU's pr_perror ends a line with strerror(errno), not the number
    code = code or next(
        (c for c in (errno.ENOSPC, errno.EDQUOT) if detail.endswith(os.strerror(c))), 0
    )
    if code:
        return store_error("destination's page server", OSError(code, detail))
    return PermanentError(
        f"destination's page server exited with status {status}: {detail or 'no error in its log'}"
    )


def check_pages(sent: dict[str, Any], images: Path, wait_s: float = 10.0) -> None:
    """Refuse ``images`` unless their pages session ended well and its digest is ``sent``'s.

    Waits up to ``wait_s`` for the destination to finish the session (its
    page server writes the last pages after the source's dump returned).
    """
    marker = images / MARKER
    deadline = time.monotonic() + wait_s
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        got = json.loads(marker.read_text())
    except (OSError, ValueError) as exc:
        raise IntegrityError(
            f"{images}: the pages stream never finished here; not restored"
        ) from exc
    if got.get("exit") != 0:
        raise CriuError(
            "page-server",
            0,
            images / "page-server.log",
            f"exited with status {got.get('exit')}; pages incomplete, not restored",
        )
    if got.get("bytes") != sent.get("bytes") or got.get("blake3") != sent.get("blake3"):
        raise IntegrityError(
            f"{images}: pages stream digest does not match the source's "
            f"({got.get('bytes')} bytes here, {sent.get('bytes')} sent); not restored"
        )


def _shut(sock: socket.socket, how: int) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(how)
