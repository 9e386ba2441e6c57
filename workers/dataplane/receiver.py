"""One node's side of data-plane sessions: check the token, receive the files, land them.

Bytes arrive in two big buffers taken in turn: one is written to the temp file
and hashed on a pool thread while the other fills, so receiving, writing and
hashing overlap. A compressed file arrives as zstd chunks, each inflated,
written and hashed in turn; a tailed one (workers.dataplane.tail) as it grows. A
connection that fails mid-file keeps the file's bytes and hash state for a resume
(:mod:`workers.dataplane.landing`); bad bytes, a bad request or a full disk delete them.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from pathlib import Path

from workers import failpoints
from workers.criu.log import PipedLog
from workers.dataplane import wire
from workers.dataplane.gate import Gate
from workers.dataplane.landing import (
    FileKey,
    Landing,
    Partial,
    check_name,
    check_target,
    open_dir,
    remove_leftovers,
    tail_key,
)
from workers.dataplane.lazylink import serve_lazy
from workers.dataplane.pagestream import serve_pages
from workers.dataplane.throttle import BEHIND, renice_thread
from workers.dataplane.tokens import NonceStore, verify_token
from workers.errors import (
    BadRequest,
    CapabilityError,
    FerryError,
    IntegrityError,
    TokenError,
    TransferError,
)
from workers.ids import check_id

log = logging.getLogger(__name__)

RECV_BUFFER = 2 << 20  # per connection, times two: one fills while the other is hashed
_DRAIN_S = 5.0  # how long a refused sender gets to read the reply before the close


class Receiver:
    """Serves node ``node``'s sessions, landing files under ``root``; open() before serving."""

    def __init__(
        self,
        root: Path,
        secret: bytes,
        node: str,
        *,
        stall_timeout_s: float,
        resume_window_s: float,
        fsync: bool,
        page_server: Callable[[Path, int], PipedLog] | None = None,
        lazy_root: Path | None = None,
        failpoints: Path | None = None,
    ) -> None:
        self._root, self._secret, self._node = root, secret, node
        self._lazy_root = lazy_root  # where this node's lazy dumps serve their pages from
        self._failpoints = failpoints
        self._page_server = page_server  # workers.criu.adapter.Criu.page_server, where CRIU runs
        self._stall_s, self._fsync = stall_timeout_s, fsync
        self._root_fd = -1
        self._nonces = NonceStore()
        self.landing = Landing(resume_window_s)
        self._hashing = ThreadPoolExecutor(os.cpu_count(), thread_name_prefix="ferry-hash")

    def open(self) -> None:
        """Create ``root`` if needed and delete what an earlier process left half-received."""
        self._root.mkdir(parents=True, exist_ok=True)
        remove_leftovers(self._root)
        self._root_fd = os.open(self._root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)

    def serve(self, conn: socket.socket, peer: tuple[str, int], gate: Gate) -> None:
        """Run one session on ``conn``, admitted by ``gate`` as pending; never raises.

        Until its token checks out the connection is ``gate``'s to cut (its
        deadline); what fails before that is counted there and logged
        rate-limited, never line by line.
        """
        conn.settimeout(min(self._stall_s, gate.limits.deadline_s))
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            first = self._open(conn)
        except (FerryError, OSError) as exc:
            if gate.is_cut(conn):
                return  # counted and logged by the gate
            reason = "deadline" if isinstance(exc, TimeoutError) else "refused"
            gate.refused(time.monotonic(), f"from {peer[0]}: {exc}", reason)
            if isinstance(exc, FerryError):
                self._refuse(conn, exc)
            return
        if not gate.authenticate(conn, time.monotonic()):
            if not gate.is_cut(conn):
                limit = gate.limits.max_sessions
                self._refuse(
                    conn, TransferError(f"receiver busy with {limit} transfers; try again")
                )
            return
        conn.settimeout(self._stall_s)
        self._session(conn, peer, first)

    def _open(
        self, conn: socket.socket
    ) -> wire.PutRequest | wire.TailRequest | tuple[str, str, str]:
        """The first frame, its token checked: a put or tail request, or a pages or lazy
        session's (type, migration, subdir)."""
        message = wire.recv_frame(conn)
        if message["type"] == "tail":
            tail = wire.parse_tail(message)
            self._check_token(tail.token, tail.migration)
            check_id("subdir", tail.subdir)
            check_name(tail.name)
            return tail
        if message["type"] in ("pages", "lazy"):
            token, migration, subdir = wire.parse_pages(message)
            self._check_token(token, migration)
            check_id("subdir", subdir)
            return str(message["type"]), migration, subdir
        return self._admit(message)

    def close(self) -> None:
        """Delete partial files; call once no session runs."""
        self._hashing.shutdown()
        self.landing.close()
        if self._root_fd >= 0:
            os.close(self._root_fd)
            self._root_fd = -1

    def _session(
        self,
        conn: socket.socket,
        peer: tuple[str, int],
        first: wire.PutRequest | wire.TailRequest | tuple[str, str, str],
    ) -> None:
        try:
            if isinstance(first, wire.TailRequest):
                self._tail(conn, first, peer)
                return
            if isinstance(first, tuple):
                kind, migration, subdir = first
                (self._pages if kind == "pages" else self._lazy)(conn, migration, subdir, peer)
                return
            request = first
            keys: list[FileKey] = [
                (request.migration, request.subdir, f.name, f.size, f.version)
                for f in request.files
            ]
            self.landing.claim(keys, conn, wait_s=self._stall_s)
            try:
                received = self._receive(conn, request, keys)
            finally:
                self.landing.release(keys, conn)
            wire.send_frame(conn, {"type": "done", "files": len(keys), "bytes": received})
            log.info("data plane: %s sent %d bytes for %s", peer, received, request.migration)
        except FerryError as exc:
            log.warning("data plane: transfer from %s failed: %s", peer, exc)
            self._refuse(conn, exc)
        except TimeoutError:
            log.warning("data plane: %s stalled for %s s, dropped", peer, self._stall_s)
            self._refuse(conn, TransferError(f"no data for {self._stall_s} s; connection dropped"))
        except OSError as exc:
            log.warning("data plane: connection from %s lost: %s", peer, exc)

    def _admit(self, message: dict[str, object]) -> wire.PutRequest:
        """Check a request's token, then its names; nothing is touched before that."""
        if message["type"] != "put":
            raise BadRequest(f"unknown request type {message['type']!r}")
        request = wire.parse_put(message)
        self._check_token(request.token, request.migration)
        check_id("subdir", request.subdir)
        for entry in request.files:
            check_name(entry.name)
        return request

    def _check_token(self, token: str, migration: str) -> None:
        """Accept ``token`` once, for ``migration`` on this node; TokenError otherwise."""
        now = time.time()
        claims = verify_token(self._secret, token, dst=self._node, now=now)
        if claims.migration != migration:
            raise TokenError(f"token is for migration {claims.migration!r}, not {migration!r}")
        self._nonces.use(claims, now)
        check_id("migration id", migration)

    def _pages(
        self, conn: socket.socket, migration: str, subdir: str, peer: tuple[str, int]
    ) -> None:
        """A pages session (workers.dataplane.pagestream), its token checked: CRIU's page server."""
        if self._page_server is None:
            raise CapabilityError(f"{self._node} runs no CRIU: send the pages as files")
        where = f"{migration}/{subdir}"
        os.close(open_dir(self._root_fd, [migration, subdir], where=where))
        wire.send_frame(conn, {"type": "ready"})
        received = serve_pages(conn, self._root / migration / subdir, self._page_server)
        log.info("data plane: %s streamed %d bytes of pages for %s", peer, received, migration)

    def _lazy(
        self, conn: socket.socket, migration: str, subdir: str, peer: tuple[str, int]
    ) -> None:
        """A lazy session (workers.dataplane.lazylink), its token checked: spliced to this
        node's post-copy page server of ``migration`` by a process of its own."""
        if self._lazy_root is None:
            raise CapabilityError(f"{self._node} serves no post-copy pages")
        pid = serve_lazy(conn, self._lazy_root / migration / subdir)
        log.info("data plane: %s pulls the lazy pages of %s (splice pid %d)", peer, migration, pid)

    def _receive(self, conn: socket.socket, request: wire.PutRequest, keys: list[FileKey]) -> int:
        """Tell the sender what is missing, receive it, land it; return bytes received."""
        where = f"{request.migration}/{request.subdir}"
        top = open_dir(self._root_fd, [request.migration, request.subdir], where=where)
        dirs = {"": top}
        held: dict[FileKey, Partial] = {}
        try:
            targets = []
            for entry, key in zip(request.files, keys, strict=False):
                *sub, base = check_name(entry.name)
                if sub and sub[0] not in dirs:
                    dirs[sub[0]] = open_dir(top, sub, where=where)
                dir_fd = dirs[sub[0] if sub else ""]
                check_target(dir_fd, base, where=f"{where}/{entry.name}")
                partial = self.landing.take(key)
                if partial is not None:
                    held[key] = partial
                targets.append((dir_fd, base, self.landing.is_landed(key, dir_fd, base)))
            have = [held[k].have if k in held else 0 for k in keys]
            wire.send_frame(conn, {"type": "ready", "have": have, "done": [t[2] for t in targets]})
            buffers = (memoryview(bytearray(RECV_BUFFER)), memoryview(bytearray(RECV_BUFFER)))
            received = 0
            for entry, key, (dir_fd, base, done) in zip(request.files, keys, targets, strict=False):
                if not done:
                    partial = held.pop(key, None) or Partial.create(
                        dir_fd, base, where=f"{where}/{entry.name}"
                    )
                    received += self._receive_file(conn, buffers, key, partial, entry)
            return received
        finally:
            now = time.monotonic()
            for key, partial in held.items():
                self.landing.keep(key, partial, now)
            for fd in dirs.values():
                os.close(fd)

    def _tail(self, conn: socket.socket, request: wire.TailRequest, peer: tuple[str, int]) -> None:
        """Receive one file as its writer grows it; land it under the key its ``end`` names
        (the bytes of a cut one wait for the file's ``put``: landing.tail_key)."""
        where = f"{request.migration}/{request.subdir}/{request.name}"
        *sub, base = check_name(request.name)
        dir_fd = open_dir(self._root_fd, [request.migration, request.subdir, *sub], where=where)
        try:
            check_target(dir_fd, base, where=where)
            partial = Partial.create(dir_fd, base, where=where)
        finally:
            os.close(dir_fd)
        renice_thread(BEHIND)  # behind the source's dump, where it runs on this machine
        behind = True
        try:
            wire.send_frame(conn, {"type": "ready"})
            buffers = (memoryview(bytearray(RECV_BUFFER)), memoryview(bytearray(RECV_BUFFER)))
            while (more := wire.parse_more(frame := wire.recv_frame(conn))) is not None:
                if more > 0:
                    _stream(conn, partial, partial.have + more, buffers, self._hashing)
                elif behind:  # ``written``: the rest is inside the freeze
                    renice_thread(-BEHIND)
                    behind = False
            digest, size, version = wire.parse_tail_end(frame)
        except (TransferError, OSError):  # cut: the put of the finished file goes on from here
            key = tail_key(request.migration, request.subdir, request.name)
            self.landing.keep(key, partial, time.monotonic())
            raise
        except BaseException:
            partial.discard()
            raise
        finally:
            if behind:
                renice_thread(-BEHIND)
        if size != partial.have or digest != partial.hasher.hexdigest():
            partial.discard()
            raise IntegrityError(f"{where}: BLAKE3 digest or size does not match; not stored")
        key = (request.migration, request.subdir, request.name, size, version)
        self.landing.landed(key, partial.commit(sync=self._fsync), time.monotonic())
        wire.send_frame(conn, {"type": "done", "files": 1, "bytes": size})
        log.info("data plane: %s tailed %d bytes for %s", peer, size, request.migration)

    def _receive_file(
        self,
        conn: socket.socket,
        buffers: tuple[memoryview, memoryview],
        key: FileKey,
        partial: Partial,
        entry: wire.FileEntry,
    ) -> int:
        """Receive the rest of one file and its digest, then land it; return file bytes received."""
        start, size = partial.have, entry.size
        try:
            if entry.codec == "zstd":
                _inflate(conn, partial, size)
            else:
                flip = failpoints.fire(self._failpoints, "receive:corrupt", key[0])
                _stream(conn, partial, size, buffers, self._hashing, flip)
            digest = wire.parse_end(wire.recv_frame(conn))
        except (TransferError, OSError):  # the connection failed, not the file: keep it
            self.landing.keep(key, partial, time.monotonic())
            raise
        except BaseException:
            partial.discard()
            raise
        if digest != partial.hasher.hexdigest():
            partial.discard()
            raise IntegrityError(f"{partial.where}: BLAKE3 digest does not match; not stored")
        self.landing.landed(key, partial.commit(sync=self._fsync), time.monotonic())
        return size - start

    def _refuse(self, conn: socket.socket, exc: FerryError) -> None:
        """Tell the sender why, then read what it already sent so the reply is not lost."""
        try:
            wire.send_frame(conn, wire.error_message(exc))
            conn.shutdown(socket.SHUT_WR)
            sink = bytearray(256 * 1024)
            deadline = time.monotonic() + min(self._stall_s, _DRAIN_S)
            while (left := deadline - time.monotonic()) > 0:
                conn.settimeout(left)
                if not conn.recv_into(sink):
                    break
        except OSError:
            pass


def _stream(
    conn: socket.socket,
    partial: Partial,
    size: int,
    buffers: tuple[memoryview, memoryview],
    hashing: Executor,
    flip: bool = False,
) -> None:
    """Receive into ``partial`` until it holds ``size`` bytes.

    Each buffer is written here and hashed on a pool thread while the other one
    fills: receiving and hashing overlap, and one hash is in flight at a time,
    so the hasher sees the bytes in order. A file's last buffer is hashed
    here: its digest is needed at once, and a small file never waits on a
    thread hand-off. ``flip`` (fault suite only) damages the first byte, as a bad link would.
    """
    hashed: Future[object] | None = None
    turn = 0
    try:
        while (want := min(len(buffers[0]), size - partial.have)) > 0:
            view = buffers[turn][:want]
            turn ^= 1
            got = _fill(conn, view)
            if flip and got:
                view[0] ^= 0xFF
                flip = False
            partial.write(view[:got])
            if hashed is not None:
                hashed.result()
                hashed = None
            if got < want or partial.have == size:
                partial.hasher.update(view[:got])
            else:
                hashed = hashing.submit(partial.hasher.update, view[:got])
            if got < want:
                raise TransferError(
                    f"sender closed the connection {partial.have} bytes into {partial.where}"
                )
    finally:
        if hashed is not None:  # also on failure: a kept partial's hash covers its bytes
            hashed.result()


def _inflate(conn: socket.socket, partial: Partial, size: int) -> None:
    """Receive zstd chunks into ``partial`` until it holds ``size`` bytes."""
    while partial.have < size:
        data = wire.recv_chunk(conn, min(wire.CHUNK_PLAIN, size - partial.have))
        partial.write(memoryview(data))
        partial.hasher.update(data)


def _fill(conn: socket.socket, view: memoryview) -> int:
    """Receive until ``view`` is full or the peer closes; return the bytes received."""
    got = 0
    while got < len(view):
        n = conn.recv_into(view[got:])
        if n == 0:
            break
        got += n
    return got
