"""The data plane's wire format: small JSON frames around runs of raw file bytes.

One TCP connection is one session with one fresh token::

    client                                        server
    put {v, token, migration, subdir, files}  ->
                                              <-  ready {have, done}       (or error)
    for each file not done:
        bytes [have:size] of the file, raw
        end {blake3}                          ->
                                              <-  done {files, bytes}      (or error)

``files`` is the manifest, ``[{name, size, version}]``; ``version`` is the
sender's opaque fingerprint of the file's content (it keys resumption).
``have[i]`` is how many bytes of file *i* the server already holds from an
earlier session and ``done[i]`` says the file is already in place, so the
client sends only what is missing. The file's BLAKE3 digest travels in its
``end`` frame, after its bytes, so the sender hashes while it sends.

A frame is a 4-byte big-endian length then a UTF-8 JSON object whose
``type`` names it. The server may answer ``error {error, message}`` at any
point and then stops reading; ``error`` names a class of
:mod:`workers.errors`. New request types (e.g. ``blocks`` for delta
transfer) are new ``type`` values after the same token check.
"""

from __future__ import annotations

import json
import re
import socket
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NoReturn

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

VERSION = 1
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


@dataclass(frozen=True)
class PutRequest:
    """A request to store files under ``<root>/<migration>/<subdir>/``."""

    token: str
    migration: str
    subdir: str
    files: tuple[FileEntry, ...]

    def message(self) -> dict[str, object]:
        """The ``put`` frame for this request."""
        files = [{"name": f.name, "size": f.size, "version": f.version} for f in self.files]
        return {
            "type": "put",
            "v": VERSION,
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
    if message.get("v") != VERSION:
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
    return FileEntry(name, size, version)
