"""The data plane's wire format: small JSON frames around runs of raw file bytes.

One TCP connection is one session with one fresh token::

    client                                        server
    put {v, token, migration, subdir, files}  ->
                                              <-  ready {have, done}       (or error)
    for each file not done:
        bytes [have:size] of the file, raw
        end {blake3}                          ->
                                              <-  done {files, bytes}      (or error)

``files`` is the manifest, ``[{name, size, version, codec?}]``; ``version`` is
the sender's opaque fingerprint of the file's content (it keys resumption).
``codec`` (protocol version 2; absent means ``none``) says how the file's
bytes travel: ``none`` is the raw bytes; ``zstd`` is a run of chunks, each a
4-byte big-endian length and one zstd frame of at most ``CHUNK_PLAIN`` bytes of
the file. ``size``, ``have`` and the digest always count the file's own
(plain) bytes, so a resumed file may change codec and checking stays end to
end. A request without a codec is sent as version 1, which older receivers
accept.
``have[i]`` is how many bytes of file *i* the server already holds from an
earlier session and ``done[i]`` says the file is already in place, so the
client sends only what is missing. The file's BLAKE3 digest travels in its
``end`` frame, after its bytes, so the sender hashes while it sends.

A frame is a 4-byte big-endian length then a UTF-8 JSON object whose
``type`` names it. The server may answer ``error {error, message}`` at any
point and then stops reading; ``error`` names a class of
:mod:`workers.errors`. Other request types are new ``type`` values after the
same token check: ``pages`` streams a dump's pages into the destination's
CRIU page server (:mod:`workers.dataplane.pagestream`), ``lazy`` lets a
post-copy destination pull pages from the source's
(:mod:`workers.dataplane.lazylink`), and ``tail`` sends one file while the
source still writes it (:mod:`workers.dataplane.tail`)::

    tail {v, token, migration, subdir, name}  ->
                                              <-  ready                    (or error)
    more {size}, then that many bytes, raw    ->  (as often as the file grows)
    written {}                                ->  (its writer is done: the rest is urgent)
    more {size}, then that many bytes, raw    ->  (what it wrote last)
    end {blake3, size, version}               ->
                                              <-  done {files, bytes}      (or error)

The digest is of the whole file as it is once its writer finished; the file
lands under the manifest key (size, version) ``end`` names, so a later ``put``
of the same file finds it done.
"""

from __future__ import annotations

import json
import re
import socket
import struct
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NoReturn

try:
    import zstandard
except ImportError:  # optional: without it every file travels uncompressed
    HAVE_ZSTD = False
else:
    HAVE_ZSTD = True

from workers.errors import (
    BadRequest,
    CapabilityError,
    FerryError,
    IntegrityError,
    NoSpace,
    PermanentError,
    TokenError,
    TransferError,
)

VERSION = 2
VERSIONS = (1, 2)  # accepted: 1 is a request without codecs
CODECS = ("none", "zstd")
CHUNK_PLAIN = 1 << 20  # file bytes per compressed chunk
MAX_CHUNK = 2 * CHUNK_PLAIN  # compressed bytes per chunk, with room for incompressible data
ZSTD_LEVEL = 1
MAX_FRAME = 1 << 20
MAX_FILES = 10_000
_LENGTH = struct.Struct(">I")
_DIGEST = re.compile(r"[0-9a-f]{64}")
# Most specific first: an error crosses the wire as the first of these it is an
# instance of; any other (transient) error crosses as a TransferError.
_WIRE_ERRORS: tuple[type[FerryError], ...] = (
    TokenError,
    IntegrityError,
    NoSpace,
    BadRequest,
    CapabilityError,
    PermanentError,
)


@dataclass(frozen=True)
class FileEntry:
    """One file of a manifest: where it goes, how big it is, which content it is."""

    name: str
    size: int
    version: str
    codec: str = "none"


@dataclass(frozen=True)
class PutRequest:
    """A request to store files under ``<root>/<migration>/<subdir>/``."""

    token: str
    migration: str
    subdir: str
    files: tuple[FileEntry, ...]

    def message(self) -> dict[str, object]:
        """The ``put`` frame for this request."""
        files: list[dict[str, object]] = []
        for f in self.files:
            entry: dict[str, object] = {"name": f.name, "size": f.size, "version": f.version}
            if f.codec != "none":
                entry["codec"] = f.codec
            files.append(entry)
        return {
            "type": "put",
            "v": VERSION if any(f.codec != "none" for f in self.files) else 1,
            "token": self.token,
            "migration": self.migration,
            "subdir": self.subdir,
            "files": files,
        }


def send_frame(sock: socket.socket, message: Mapping[str, object]) -> None:
    """Send one frame."""
    body = json.dumps(message, separators=(",", ":")).encode()
    sock.sendall(_LENGTH.pack(len(body)) + body)


def recv_frame(sock: socket.socket) -> dict[str, Any]:
    """Receive one frame; TransferError if the peer hangs up, BadRequest if it is garbage."""
    (length,) = _LENGTH.unpack(recv_exact(sock, _LENGTH.size))
    if length > MAX_FRAME:
        raise BadRequest(f"frame of {length} bytes exceeds the {MAX_FRAME}-byte limit")
    try:
        message = json.loads(recv_exact(sock, length))
    except ValueError as exc:
        raise BadRequest(f"frame is not JSON: {exc}") from exc
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise BadRequest("frame is not a JSON object with a 'type'")
    return message


def recv_exact(sock: socket.socket, n: int) -> bytes:
    """Receive exactly ``n`` bytes; TransferError if the peer hangs up first."""
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:])
        if k == 0:
            raise TransferError(f"peer closed the connection ({got} of {n} bytes of a frame)")
        got += k
    return bytes(buf)


def expect(message: dict[str, Any], kind: str) -> dict[str, Any]:
    """Return ``message`` if it is a ``kind`` frame; raise what an error frame carries."""
    if message["type"] == "error":
        raise_error(message)
    if message["type"] != kind:
        raise TransferError(f"protocol error: expected {kind!r}, got {message['type']!r}")
    return message


def error_message(exc: FerryError) -> dict[str, object]:
    """The ``error`` frame that tells the peer about ``exc``."""
    name = next((c.__name__ for c in _WIRE_ERRORS if isinstance(exc, c)), "TransferError")
    return {"type": "error", "error": name, "message": str(exc)}


def raise_error(message: Mapping[str, Any]) -> NoReturn:
    """Raise the ferry error an ``error`` frame describes."""
    classes = {cls.__name__: cls for cls in (*_WIRE_ERRORS, TransferError)}
    cls = classes.get(str(message.get("error")), PermanentError)
    raise cls(f"receiver: {message.get('message', 'unspecified error')}")


def parse_put(message: Mapping[str, Any]) -> PutRequest:
    """Check the shape of a ``put`` frame (not its paths or token) and return it."""
    if message.get("v") not in VERSIONS:
        raise BadRequest(f"unsupported protocol version {message.get('v')!r} (want {VERSION})")
    token, migration, subdir = (message.get(k) for k in ("token", "migration", "subdir"))
    if not (isinstance(token, str) and isinstance(migration, str) and isinstance(subdir, str)):
        raise BadRequest("put needs string 'token', 'migration' and 'subdir'")
    files = message.get("files")
    if not isinstance(files, list) or len(files) > MAX_FILES:
        raise BadRequest(f"put needs a list of at most {MAX_FILES} 'files'")
    entries = tuple(_file_entry(f) for f in files)
    if len({e.name for e in entries}) != len(entries):
        raise BadRequest("put lists the same file name twice")
    return PutRequest(token, migration, subdir, entries)


def parse_pages(message: Mapping[str, Any]) -> tuple[str, str, str]:
    """Check the shape of a ``pages``, ``lazy`` or ``tail`` frame: token, migration, subdir."""
    if message.get("v") not in VERSIONS:
        raise BadRequest(f"unsupported protocol version {message.get('v')!r} (want {VERSION})")
    token, migration, subdir = (message.get(k) for k in ("token", "migration", "subdir"))
    if not (isinstance(token, str) and isinstance(migration, str) and isinstance(subdir, str)):
        raise BadRequest(f"{message['type']} needs string 'token', 'migration' and 'subdir'")
    return token, migration, subdir


MAX_MORE = 1 << 30  # bytes one ``more`` frame of a tail may announce


@dataclass(frozen=True)
class TailRequest:
    """A request to receive one file, ``<root>/<migration>/<subdir>/<name>``, as it grows."""

    token: str
    migration: str
    subdir: str
    name: str

    def message(self) -> dict[str, object]:
        """The ``tail`` frame for this request."""
        return {
            "type": "tail",
            "v": VERSION,
            "token": self.token,
            "migration": self.migration,
            "subdir": self.subdir,
            "name": self.name,
        }


def parse_tail(message: Mapping[str, Any]) -> TailRequest:
    """Check the shape of a ``tail`` frame (not its paths or token) and return it."""
    token, migration, subdir = parse_pages(message)
    name = message.get("name")
    if not isinstance(name, str):
        raise BadRequest("tail needs a string 'name'")
    return TailRequest(token, migration, subdir, name)


def parse_more(message: Mapping[str, Any]) -> int | None:
    """The byte count of a tail's ``more`` frame, -1 for its ``written`` frame (the
    writer is done), None for its ``end`` frame."""
    if message["type"] == "end":
        return None
    if message["type"] == "written":
        return -1
    size = message.get("size")
    if message["type"] != "more" or isinstance(size, bool) or not isinstance(size, int):
        raise BadRequest("expected a 'more' frame with an integer size, or 'end'")
    if not 0 < size <= MAX_MORE:
        raise BadRequest(f"a 'more' frame announces 1 to {MAX_MORE} bytes, not {size}")
    return size


def parse_tail_end(message: Mapping[str, Any]) -> tuple[str, int, str]:
    """A tail's ``end`` frame: the whole file's BLAKE3 digest, its size and version."""
    digest = parse_end(message)
    size, version = message.get("size"), message.get("version")
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise BadRequest("a tail's 'end' needs the file's non-negative integer size")
    if not isinstance(version, str) or len(version) > 128:
        raise BadRequest("a tail's 'end' needs the file's version, a string")
    return digest, size, version


def parse_ready(message: Mapping[str, Any], sizes: list[int]) -> tuple[list[int], list[bool]]:
    """The receiver's (bytes held, already in place) per file of the manifest, checked."""
    have, done = message.get("have"), message.get("done")
    if not (isinstance(have, list) and isinstance(done, list)):
        raise TransferError("protocol error: 'ready' without 'have' and 'done' lists")
    ok = len(have) == len(done) == len(sizes) and all(
        isinstance(h, int) and isinstance(d, bool) and 0 <= h <= size
        for h, d, size in zip(have, done, sizes, strict=False)
    )
    if not ok:
        raise TransferError("protocol error: 'ready' does not match the manifest")
    return have, done


def parse_end(message: Mapping[str, Any]) -> str:
    """Check an ``end`` frame and return the BLAKE3 hex digest it carries."""
    digest = message.get("blake3")
    if message["type"] != "end" or not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
        raise BadRequest("expected an 'end' frame with a BLAKE3 hex digest after the file")
    return digest


def _file_entry(obj: object) -> FileEntry:
    if not isinstance(obj, dict):
        raise BadRequest("each manifest entry must be an object")
    name, size, version = obj.get("name"), obj.get("size"), obj.get("version")
    if not isinstance(name, str) or not isinstance(version, str) or len(version) > 128:
        raise BadRequest(f"manifest entry needs a string name and version: {obj!r:.200}")
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise BadRequest(f"manifest entry {name!r:.100} needs a non-negative integer size")
    codec = obj.get("codec", "none")
    if codec not in CODECS:
        raise BadRequest(f"manifest entry {name!r:.100} has unknown codec {codec!r:.20}")
    if codec == "zstd" and not HAVE_ZSTD:
        raise CapabilityError("receiver cannot decompress zstd (no zstandard): send uncompressed")
    return FileEntry(name, size, version, str(codec))


_local = threading.local()


def compress(data: bytes | memoryview) -> bytes:
    """One zstd frame holding ``data`` (at most CHUNK_PLAIN bytes); thread-safe."""
    if not hasattr(_local, "zstd"):
        _local.zstd = zstandard.ZstdCompressor(level=ZSTD_LEVEL)
    frame: bytes = _local.zstd.compress(data)
    return frame


def send_chunk(sock: socket.socket, frame: bytes) -> None:
    """Send one compressed chunk: its length, then the frame."""
    sock.sendall(_LENGTH.pack(len(frame)) + frame)


def recv_chunk(sock: socket.socket, most: int) -> bytes:
    """Receive one compressed chunk and return the at most ``most`` file bytes it holds.

    IntegrityError if it is not one zstd frame of 1 to ``most`` bytes; it is
    never inflated past its declared size, so a lying frame costs nothing.
    """
    (length,) = _LENGTH.unpack(recv_exact(sock, _LENGTH.size))
    if length > MAX_CHUNK:
        raise IntegrityError(f"compressed chunk of {length} bytes exceeds {MAX_CHUNK}")
    frame = recv_exact(sock, length)
    try:
        size = zstandard.frame_content_size(frame)
        if not 0 < size <= most:
            raise IntegrityError(f"compressed chunk claims {size} bytes; expected 1 to {most}")
        if not hasattr(_local, "unzstd"):
            _local.unzstd = zstandard.ZstdDecompressor()
        data: bytes = _local.unzstd.decompress(frame, max_output_size=size)
    except zstandard.ZstdError as exc:
        raise IntegrityError(f"compressed chunk is corrupt: {exc}") from exc
    if len(data) != size:
        raise IntegrityError(f"compressed chunk held {len(data)} bytes, not {size}")
    return data
