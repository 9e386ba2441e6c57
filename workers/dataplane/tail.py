"""A file sent to another node while its writer still writes it: a dump's pages image.

A cold dump that sends its images as files writes its pages image (CRIU's
``pages-N.img``, by far its biggest) for most of the dump, then the transfer
sends it. :class:`Tail` sends it during the dump instead: from the moment the
file appears, what has been written so far goes out (``more`` frames of the
``tail`` session, :mod:`workers.dataplane.wire`), and once the writer is done
(:meth:`Tail.written`) the rest, then the BLAKE3 digest of the whole file as it
is now, its size and its version. The receiver checks its bytes against that
digest and lands the file under that manifest key; the transfer's ``put`` then
finds it in place and sends only the other images.

The digest is taken from the finished file, not from the bytes as they were
sent: a byte the writer changed after it went out fails the check, and the
file is sent again by the ``put``. A tail that fails in any way is just a
tail that did not land: the ``put`` sends the file as it always did.
"""

from __future__ import annotations

import logging
import mmap
import os
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import blake3

from workers.dataplane import wire
from workers.dataplane.sender import CHUNK, version_of
from workers.dataplane.throttle import BEHIND, Budget, renice_thread
from workers.errors import FerryError, IntegrityError

log = logging.getLogger(__name__)

POLL_S = 0.003  # how often the tail looks for the file, and whether it grew


@dataclass(frozen=True)
class TailStats:
    """What a tail landed: one file, its bytes, and how long the rest took after the writer."""

    name: str
    bytes: int
    seconds: float  # the whole tail, from its start
    finish_seconds: float  # from :meth:`Tail.written` until the file landed
    finish_bytes: int  # of them, sent after :meth:`Tail.written`
    hash_seconds: float  # of that, hashing the finished file


class Tail:
    """Sends the first file of ``dir`` whose name ``wanted`` accepts, as it is written.

    ``start()`` before the writer starts, ``written()`` once it is done (or
    ``cancel()`` if it failed), ``finish()`` to wait until the file landed.
    """

    def __init__(
        self,
        address: tuple[str, int],
        token_factory: Callable[[], str],
        migration: str,
        subdir: str,
        directory: Path,
        wanted: Callable[[str], bool],
        *,
        buckets: Sequence[Budget] = (),
        timeout_s: float = 10.0,
    ) -> None:
        self._address, self._token = address, token_factory
        self._migration, self._subdir, self._dir = migration, subdir, directory
        self._wanted, self._buckets, self._timeout_s = wanted, list(buckets), timeout_s
        self._written = threading.Event()  # the writer is done: the file is final
        self._cancelled = False
        self._started = self._finish_at = 0.0
        self._result: TailStats | None = None
        self._file: str | None = None  # the file it sends, once chosen
        self._chosen = threading.Event()  # it chose one, or never will
        self._thread = threading.Thread(target=self._run, name="ferry-tail", daemon=True)

    def start(self) -> None:
        self._started = time.monotonic()
        self._thread.start()

    def written(self) -> str | None:
        """The writer is done: the rest goes out in the background. The name of the file
        this tail sends (so the caller's ``put`` leaves it out), or None if none."""
        self._finish_at = time.monotonic()
        self._written.set()
        self._chosen.wait()
        return self._file

    @property
    def file(self) -> str | None:
        """The name of the file it sends, once :meth:`written` said it."""
        return self._file

    def finish(self) -> TailStats | None:
        """Wait until the file landed (after :meth:`written`); what landed, or None."""
        self._thread.join()
        return self._result

    def cancel(self) -> None:
        """The writer failed: stop, land nothing."""
        self._cancelled = True
        self._written.set()
        self._thread.join()

    def _run(self) -> None:
        renice_thread(BEHIND)  # while the dump runs, CRIU's CPU comes first
        try:
            try:
                path = self._wait_for_file()
                self._file = path.name if path is not None else None
            finally:
                self._chosen.set()
            if path is not None:
                self._result = self._send(path)
        except (FerryError, OSError) as exc:  # the put sends the file instead
            log.info("data plane: %s: tail not landed (%s)", self._migration, exc)

    def _wait_for_file(self) -> Path | None:
        while not self._cancelled:
            done = self._written.is_set()  # looked at before the listing: a file written
            try:  # by then is in the listing
                names = sorted(n for n in os.listdir(self._dir) if self._wanted(n))
            except FileNotFoundError:  # the writer makes the directory
                names = []
            if names:
                return self._dir / names[0]
            if done:
                return None
            self._written.wait(POLL_S)
        return None

    def _send(self, path: Path) -> TailStats | None:
        request = wire.TailRequest(self._token(), self._migration, self._subdir, path.name)
        with (
            path.open("rb") as f,
            socket.create_connection(self._address, timeout=self._timeout_s) as sock,
        ):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            wire.send_frame(sock, request.message())
            wire.expect(wire.recv_frame(sock), "ready")
            sent, at_finish = 0, -1
            chunk = min([CHUNK, *(b.burst for b in self._buckets)])  # as the put's: the rate holds
            while True:
                final = self._written.is_set()  # before the size: a final size is all of it
                if self._cancelled:
                    return None
                if final and at_finish < 0:  # the rest is inside the freeze: at full speed,
                    at_finish = sent  # here and on the receiver
                    renice_thread(-BEHIND)
                    wire.send_frame(sock, {"type": "written"})
                size = os.fstat(f.fileno()).st_size
                if size > sent:
                    sent = self._more(sock, f, sent, min(size - sent, chunk))
                elif final:
                    break
                else:
                    self._written.wait(POLL_S)
            hashing = time.monotonic()
            digest = whole_digest(f.fileno(), sent)
            hashed = time.monotonic() - hashing
            end = {"blake3": digest, "size": sent, "version": version_of(os.fstat(f.fileno()))}
            wire.send_frame(sock, {"type": "end", **end})
            wire.expect(wire.recv_frame(sock), "done")
        now = time.monotonic()
        return TailStats(
            path.name, sent, now - self._started, now - self._finish_at, sent - at_finish, hashed
        )

    def _more(self, sock: socket.socket, f: BinaryIO, offset: int, n: int) -> int:
        for b in self._buckets:
            b.take(n)
        wire.send_frame(sock, {"type": "more", "size": n})
        if sock.sendfile(f, offset, n) < n:
            raise IntegrityError(f"{f.name} shrank while being tailed")
        return offset + n


def whole_digest(fd: int, size: int) -> str:
    """BLAKE3 of the open file ``fd``, which must be ``size`` bytes long before and after.

    Its writer is done and the tree frozen, so every core may hash (about half
    the time on two cores), the file mapped whole: no copy. A file that changed
    size meanwhile is refused (one truncated while mapped would fault, as
    workers.dataplane.sender.file_digest says: dumped images are not).
    """
    if os.fstat(fd).st_size != size:
        raise IntegrityError(f"a tailed file is not the {size} bytes sent")
    hasher = blake3.blake3(max_threads=blake3.blake3.AUTO)
    if size:
        with mmap.mmap(fd, size, access=mmap.ACCESS_READ) as m:
            hasher.update(m)
    if os.fstat(fd).st_size != size:
        raise IntegrityError("a tailed file changed size while it was hashed")
    return hasher.hexdigest()
