"""Where received files land: checked names, symlink-proof directories, partial files.

A file for migration *m* lands in ``<root>/<m>/<subdir>/<name>``. Every
directory on the way is opened relative to its parent with ``O_NOFOLLOW``, so
no symlink, planted or raced, leads outside ``root``. Bytes go to a temp file
in the same directory and are renamed into place once verified.

Resumption state is kept in memory, per server process: a :class:`Partial`
holds its open temp file, the bytes written so far and the running BLAKE3
hasher, so a resumed session continues without reading the prefix again. A
partial nobody resumes within the resume window is deleted; so are leftovers
of an earlier process when the server starts.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import socket
import stat
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import blake3

from workers.errors import BadRequest, CapabilityError, NoSpace, TransferError

TEMP_PREFIX = ".ferry-"
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_TEMP_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC

# (migration, subdir, name, size, version): one file's content at one destination.
FileKey = tuple[str, str, str, int, str]


def tail_key(migration: str, subdir: str, name: str) -> FileKey:
    """Where a cut tail's bytes wait for the ``put`` of the finished file (size and
    version unknown until the writer is done): workers.dataplane.tail."""
    return (migration, subdir, name, -1, "")


def check_name(name: str) -> list[str]:
    """Split a destination file name into its one or two parts, or raise BadRequest.

    A name is relative, has at most one subdirectory level, and no part is
    empty, ``.``, ``..``, a ferry temp name, or holds NUL, control characters
    or backslashes.
    """
    parts = name.split("/")
    bad = (
        len(parts) > 2
        or any(p in ("", ".", "..") or p.startswith(TEMP_PREFIX) for p in parts)
        or any(len(p.encode()) > 255 for p in parts)
        or any(ord(c) < 32 or c in "\x7f\\" for c in name)
    )
    if bad:
        raise BadRequest(
            f"bad file name {name!r:.120}: want a relative name with at most one "
            "subdirectory, no '..', no absolute path, no control characters"
        )
    return parts


def open_dir(parent_fd: int, parts: Iterable[str], *, where: str) -> int:
    """Open (creating as needed) the directory ``parts`` below ``parent_fd``; refuse symlinks."""
    fd = os.dup(parent_fd)
    try:
        for part in parts:
            with contextlib.suppress(FileExistsError):
                os.mkdir(part, 0o700, dir_fd=fd)
            try:
                child = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except OSError as exc:  # ELOOP: a symlink; ENOTDIR: a file
                raise BadRequest(f"{where}: {part!r} is a symlink or not a directory") from exc
            os.close(fd)
            fd = child
        return fd
    except BaseException:
        os.close(fd)
        raise


def check_target(dir_fd: int, base: str, *, where: str) -> None:
    """Refuse to land a file on anything but a regular file or nothing."""
    try:
        st = os.stat(base, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if not stat.S_ISREG(st.st_mode):
        raise BadRequest(f"{where} exists and is a symlink or not a regular file")


def store_error(what: str, exc: OSError) -> CapabilityError | NoSpace:
    """The ferry error for a write the disk refused: NoSpace when it is full."""
    cls = NoSpace if exc.errno in (errno.ENOSPC, errno.EDQUOT) else CapabilityError
    return cls(f"{what}: {exc.strerror}")


@dataclass(eq=False)
class Partial:
    """A file being received: its open temp file, its length and the hash of its bytes."""

    dir_fd: int
    temp: str
    base: str
    where: str
    fd: int
    hasher: blake3.blake3 = field(default_factory=blake3.blake3)
    have: int = 0
    expires: float = 0.0

    @classmethod
    def create(cls, dir_fd: int, base: str, *, where: str) -> Partial:
        """Start an empty temp file next to ``base`` in ``dir_fd``."""
        temp = f"{TEMP_PREFIX}{secrets.token_hex(8)}.part"
        try:
            fd = os.open(temp, _TEMP_FLAGS, 0o600, dir_fd=dir_fd)
        except OSError as exc:
            raise store_error(f"cannot create {where}", exc) from exc
        return cls(os.dup(dir_fd), temp, base, where, fd)

    def write(self, data: memoryview) -> None:
        """Append ``data``; NoSpace if the disk is full, CapabilityError if it refuses otherwise.

        The caller feeds the same bytes to ``hasher`` (possibly on another thread)
        and waits for it before the partial is kept, landed or handed on.
        """
        try:
            done = 0
            while done < len(data):
                done += os.write(self.fd, data[done:])
        except OSError as exc:
            raise store_error(f"cannot store {self.where}", exc) from exc
        self.have += len(data)

    def commit(self, *, sync: bool) -> tuple[int, int]:
        """Move the temp file into place (durably if ``sync``); return its (device, inode)."""
        try:
            if sync:
                os.fsync(self.fd)
            st = os.fstat(self.fd)
            os.rename(self.temp, self.base, src_dir_fd=self.dir_fd, dst_dir_fd=self.dir_fd)
            if sync:
                os.fsync(self.dir_fd)
        except OSError as exc:
            self.discard()
            raise store_error(f"cannot store {self.where}", exc) from exc
        os.close(self.fd)
        os.close(self.dir_fd)
        return st.st_dev, st.st_ino

    def discard(self) -> None:
        """Delete the temp file."""
        os.close(self.fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.temp, dir_fd=self.dir_fd)
        os.close(self.dir_fd)


class Landing:
    """This node's files in flight: partials waiting for a resume, files already landed.

    A file is worked on by one session at a time: a session that claims a file
    still held by another (a connection its client has already given up on)
    cuts that one off and waits for it to let go.
    """

    def __init__(self, resume_window_s: float) -> None:
        self._window = resume_window_s
        self._cond = threading.Condition()
        self._owners: dict[FileKey, socket.socket] = {}
        self._partials: dict[FileKey, Partial] = {}
        self._landed: dict[FileKey, tuple[int, int, float]] = {}

    def claim(self, keys: list[FileKey], owner: socket.socket, wait_s: float) -> None:
        """Make ``owner`` the only session working on ``keys``."""
        with self._cond:
            for other in {self._owners[k] for k in keys if k in self._owners}:
                with contextlib.suppress(OSError):
                    other.shutdown(socket.SHUT_RDWR)
            if not self._cond.wait_for(lambda: self._owners.keys().isdisjoint(keys), wait_s):
                raise TransferError("another session still holds these files; try again")
            self._owners.update(dict.fromkeys(keys, owner))

    def release(self, keys: list[FileKey], owner: socket.socket) -> None:
        """Let other sessions work on the ``keys`` that ``owner`` holds."""
        with self._cond:
            for k in keys:
                if self._owners.get(k) is owner:
                    del self._owners[k]
            self._cond.notify_all()

    def take(self, key: FileKey) -> Partial | None:
        """The partial kept for ``key``, or what a cut tail of that file received (no more
        than its size: the digest of the whole file decides), now the caller's, or None."""
        with self._cond:
            partial = self._partials.pop(key, None) or self._partials.pop(tail_key(*key[:3]), None)
        if partial is not None and partial.have > key[3]:
            partial.discard()
            return None
        return partial

    def keep(self, key: FileKey, partial: Partial, now: float) -> None:
        """Keep ``partial`` for a resume until the window closes."""
        partial.expires = now + self._window
        with self._cond:
            self._partials[key] = partial

    def landed(self, key: FileKey, identity: tuple[int, int], now: float) -> None:
        """Remember that ``key`` is in place as the file ``identity`` (device, inode)."""
        with self._cond:
            self._landed[key] = (*identity, now + self._window)

    def is_landed(self, key: FileKey, dir_fd: int, base: str) -> bool:
        """Whether ``key`` is in place, untouched since this server put it there."""
        with self._cond:
            entry = self._landed.get(key)
        if entry is None:
            return False
        try:
            st = os.stat(base, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return False
        return stat.S_ISREG(st.st_mode) and (st.st_dev, st.st_ino) == entry[:2]

    def sweep(self, now: float) -> None:
        """Delete partials and forget landed files whose resume window has closed."""
        with self._cond:
            stale = [k for k, p in self._partials.items() if p.expires <= now]
            expired = [self._partials.pop(k) for k in stale]
            self._landed = {k: v for k, v in self._landed.items() if v[2] > now}
        for partial in expired:
            partial.discard()

    def close(self) -> None:
        """Delete every partial."""
        self.sweep(float("inf"))


def remove_leftovers(root: Path) -> None:
    """Delete temp files an earlier server process left under ``root``."""
    for top, subdirs, names, dir_fd in os.fwalk(root):  # does not follow symlinks
        depth = len(Path(top).relative_to(root).parts)
        if depth >= 3:
            subdirs.clear()
        for name in names:
            if depth >= 2 and name.startswith(TEMP_PREFIX) and name.endswith(".part"):
                os.unlink(name, dir_fd=dir_fd)
