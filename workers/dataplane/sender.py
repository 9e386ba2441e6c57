"""Sending a migration's files to another node's transfer service.

The kernel copies each file to the socket (``sendfile``, no copy through
Python) while a background thread hashes it with BLAKE3 from the page cache;
the digest follows the file's bytes, so checking adds no wait before the
first byte moves. With ``codec="zstd"`` files of 64 KiB and more travel as
zstd chunks instead, compressed by a few threads ahead of the socket; the
digest is still of the file's own bytes. A dropped connection is retried
with a fresh token and resumes where the receiver stopped.
"""

from __future__ import annotations

import logging
import mmap
import os
import select
import socket
import stat
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import blake3

from workers.dataplane import wire
from workers.dataplane.throttle import Budget, TokenBucket
from workers.errors import BadRequest, CapabilityError, IntegrityError, TransferError

log = logging.getLogger(__name__)

CHUNK = 8 << 20  # bytes per sendfile call: how often progress is told and replies are read
HASH_WINDOW = 16 << 20
MIN_COMPRESS = 64 << 10  # smaller files travel as they are
COMPRESSORS = min(4, os.cpu_count() or 1)  # threads compressing one transfer's chunks


@dataclass(frozen=True)
class SendStats:
    """What one :func:`send_files` call did."""

    bytes: int  # file bytes put on the wire (compressed, if so), over every attempt
    files: int  # files now in place on the receiver
    seconds: float
    resumed: int  # reconnections that continued an interrupted transfer
    codec: str = "none"  # how files of MIN_COMPRESS bytes and more travelled


@dataclass(frozen=True)
class _Source:
    path: Path
    entry: wire.FileEntry


class _Meter:
    """Bytes sent, and bytes the receiver holds, told to the caller's progress callback."""

    def __init__(self, total: int, progress: Callable[[int, int], None] | None) -> None:
        self.total, self.sent, self.done, self._progress = total, 0, 0, progress

    def restart(self, done: int) -> None:
        self.done = done
        self._tell()

    def add(self, sent: int, done: int) -> None:
        self.sent += sent
        self.done += done
        self._tell()

    def _tell(self) -> None:
        if self._progress is not None:
            self._progress(self.done, self.total)


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
    codec: str = "none",
) -> SendStats:
    """Send ``files`` (local path, destination name) to the transfer service at ``address``.

    Each connection uses a new token from ``token_factory``. ``bandwidth_bps``
    (bytes per second) limits this call; ``bucket`` is a budget shared with
    other transfers, such as the node's; both hold, on the bytes the wire
    carries. ``progress(done, total)`` is called as file bytes reach the
    receiver. ``codec`` ``zstd`` compresses files of MIN_COMPRESS bytes and
    more (:func:`workers.dataplane.transfer.send_files` chooses it when it pays).

    Raises TransferError when the connection fails ``retries + 1`` times (refused,
    reset, silent for ``timeout_s``), and TokenError, IntegrityError, BadRequest,
    CapabilityError or NoSpace (the receiver's disk is full) as the receiver replies.
    """
    if retries < 0:
        raise BadRequest(f"retries must be 0 or more, not {retries}")
    if codec not in wire.CODECS:
        raise BadRequest(f"unknown codec {codec!r}: use one of {', '.join(wire.CODECS)}")
    if codec == "zstd" and not wire.HAVE_ZSTD:
        raise CapabilityError("zstd compression needs the zstandard package")
    sources = [_source(Path(path), name, codec) for path, name in files]
    own = TokenBucket(bandwidth_bps) if bandwidth_bps else None
    buckets = [b for b in (own, bucket) if b is not None]
    meter = _Meter(sum(s.entry.size for s in sources), progress)
    started = time.monotonic()
    hasher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ferry-hash")
    squeezer = ThreadPoolExecutor(COMPRESSORS, thread_name_prefix="ferry-zstd")
    try:
        digests = [hasher.submit(_digest, s) for s in sources]
        for attempt in range(retries + 1):
            request = wire.PutRequest(
                token_factory(), migration, subdir, tuple(s.entry for s in sources)
            )
            try:
                _attempt(address, request, sources, digests, buckets, meter, timeout_s, squeezer)
                break
            except (TransferError, OSError) as exc:
                if attempt == retries:
                    host, port = address
                    raise TransferError(
                        f"sending {migration} to {host}:{port} failed {attempt + 1} times: {exc}"
                    ) from exc
                log.info(
                    "data plane: %s: attempt %d failed (%s), retrying", migration, attempt, exc
                )
                time.sleep(min(0.1 * 2**attempt, 2.0))
    finally:
        hasher.shutdown(wait=False, cancel_futures=True)
        squeezer.shutdown(wait=False, cancel_futures=True)
    return SendStats(meter.sent, len(sources), time.monotonic() - started, attempt, codec)


def _attempt(
    address: tuple[str, int],
    request: wire.PutRequest,
    sources: list[_Source],
    digests: list[Future[str]],
    buckets: list[Budget],
    meter: _Meter,
    timeout_s: float,
    squeezer: Executor,
) -> None:
    """One connection: offer the files, send what the receiver lacks, read its verdict."""
    with socket.create_connection(address, timeout=timeout_s) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        wire.send_frame(sock, request.message())
        reply = wire.expect(wire.recv_frame(sock), "ready")
        have, done = wire.parse_ready(reply, [s.entry.size for s in sources])
        meter.restart(
            sum(s.entry.size if d else h for s, h, d in zip(sources, have, done, strict=False))
        )
        replies = select.poll()
        replies.register(sock, select.POLLIN)
        for source, digest, start, landed in zip(sources, digests, have, done, strict=False):
            if landed:
                continue
            if source.entry.codec == "zstd":
                _send_compressed(sock, source, start, buckets, meter, replies, squeezer)
            else:
                _send_file(sock, source, start, buckets, meter, replies)
            wire.send_frame(sock, {"type": "end", "blake3": digest.result()})
        wire.expect(wire.recv_frame(sock), "done")


def _send_file(
    sock: socket.socket,
    source: _Source,
    offset: int,
    buckets: list[Budget],
    meter: _Meter,
    replies: select.poll,
) -> None:
    """Send ``source`` from ``offset`` to its end, stopping early if the receiver objects."""
    chunk = min([CHUNK, *(b.burst for b in buckets)])
    end = source.entry.size
    try:
        f = source.path.open("rb")
    except OSError as exc:
        raise BadRequest(f"cannot read {source.path}: {exc.strerror}") from exc
    with f:
        while offset < end:
            n = min(chunk, end - offset)
            for b in buckets:
                b.take(n)
            sent = sock.sendfile(f, offset, n)
            if sent < n:
                raise IntegrityError(f"{source.path} shrank while being sent")
            offset += sent
            meter.add(sent, sent)
            _check_refusal(sock, replies)


def _send_compressed(
    sock: socket.socket,
    source: _Source,
    offset: int,
    buckets: list[Budget],
    meter: _Meter,
    replies: select.poll,
    squeezer: Executor,
) -> None:
    """Send ``source`` from ``offset`` as zstd chunks, compressed a few chunks ahead."""
    end = source.entry.size
    try:
        f = source.path.open("rb")
    except OSError as exc:
        raise BadRequest(f"cannot read {source.path}: {exc.strerror}") from exc

    def squeeze(at: int, n: int) -> bytes:
        data = os.pread(f.fileno(), n, at)
        if len(data) < n:
            raise IntegrityError(f"{source.path} shrank while being sent")
        return wire.compress(data)

    ahead: deque[tuple[int, Future[bytes]]] = deque()
    with f:
        try:
            while offset < end or ahead:
                while offset < end and len(ahead) < 2 * COMPRESSORS:
                    n = min(wire.CHUNK_PLAIN, end - offset)
                    ahead.append((n, squeezer.submit(squeeze, offset, n)))
                    offset += n
                n, future = ahead.popleft()
                frame = future.result()
                for b in buckets:
                    b.take(len(frame) + 4)
                wire.send_chunk(sock, frame)
                meter.add(len(frame) + 4, n)
                _check_refusal(sock, replies)
        finally:
            for _, future in ahead:  # none may read the file once it is closed
                if not future.cancel():
                    future.exception()


def _check_refusal(sock: socket.socket, replies: select.poll) -> None:
    """Raise what the receiver said, if it spoke: mid-file it speaks only to refuse."""
    if replies.poll(0):
        reply = wire.recv_frame(sock)
        if reply["type"] == "error":
            wire.raise_error(reply)
        raise TransferError(f"protocol error: unexpected {reply['type']!r} mid-file")


def _source(path: Path, name: str, codec: str) -> _Source:
    try:
        st = path.stat()
    except OSError as exc:
        raise BadRequest(f"cannot send {path}: {exc.strerror}") from exc
    if not stat.S_ISREG(st.st_mode):
        raise BadRequest(f"cannot send {path}: not a regular file")
    codec = codec if st.st_size >= MIN_COMPRESS else "none"
    return _Source(path, wire.FileEntry(name, st.st_size, version_of(st), codec))


def version_of(st: os.stat_result) -> str:
    """A file's version in a manifest: same device, inode and mtime, same content, so
    the receiver may resume it (or find it landed already)."""
    return f"{st.st_dev:x}-{st.st_ino:x}-{st.st_mtime_ns:x}"


def _digest(source: _Source) -> str:
    return file_digest(source.path, source.entry.size)


def file_digest(path: Path, size: int) -> str:
    """BLAKE3 of the file's first ``size`` bytes, the ones sendfile sends.

    The file is mapped 16 MiB at a time: no copy through a buffer (a third of
    the hashing cost), and resident memory stays small. A file truncated while
    mapped would fault (SIGBUS); images are not written once dumped, and a
    file already shorter than its manifest size is refused before mapping.
    """
    hasher = blake3.blake3()
    try:
        with path.open("rb") as f:
            if os.fstat(f.fileno()).st_size < size:
                raise IntegrityError(f"{path} shrank while being sent")
            for offset in range(0, size, HASH_WINDOW):
                length = min(HASH_WINDOW, size - offset)
                with mmap.mmap(f.fileno(), length, access=mmap.ACCESS_READ, offset=offset) as m:
                    hasher.update(m)
    except OSError as exc:
        raise BadRequest(f"cannot read {path}: {exc.strerror}") from exc
    return hasher.hexdigest()
