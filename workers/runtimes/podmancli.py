"""Podman's command line, as the oci runtime drives it for the Podman containers it adopted.

One node's Podman: its own store where the node sets one (``--root``,
``--runroot`` and ``--tmpdir`` under ``podman_store``; several nodes on one
host each need their own), else the host's. Every argument ferry passes is a
checked container name, an image ID or a path ferry made; nothing from a
message reaches it unchecked.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workers.errors import BadRequest, PermanentError

IMAGE_ID = frozenset("0123456789abcdef")
REF = re.compile(r"[a-z0-9][a-zA-Z0-9._/:@-]{0,254}")


def check_image_id(text: str) -> str:
    """``text`` if it is a full image ID (64 hex digits, ``sha256:`` allowed in front).

    >>> check_image_id("sha256:" + "ab" * 32) == "ab" * 32
    True
    >>> check_image_id("ubuntu; rm -rf /")
    Traceback (most recent call last):
    ...
    workers.errors.BadRequest: bad image id 'ubuntu; rm -rf /': want 64 hex digits
    """
    bare = text.removeprefix("sha256:")
    if len(bare) != 64 or not set(bare) <= IMAGE_ID:
        raise BadRequest(f"bad image id {text!r}: want 64 hex digits")
    return bare


def check_image_ref(text: str) -> str:
    """``text`` if it reads as an image name (``localhost/web:1``, ``docker.io/x/y@sha256:...``).

    >>> check_image_ref("localhost/ferry-test:py")
    'localhost/ferry-test:py'
    >>> check_image_ref("--rm")
    Traceback (most recent call last):
    ...
    workers.errors.BadRequest: bad image name '--rm'
    """
    if not REF.fullmatch(text):
        raise BadRequest(f"bad image name {text!r}")
    return text


@dataclass(frozen=True)
class Podman:
    """``podman`` on this node (``store``: this node's own store; None: the host's)."""

    binary: str = "podman"
    store: Path | None = None

    def installed(self) -> bool:
        return shutil.which(self.binary) is not None

    def argv(self, *args: str) -> list[str]:
        where: list[str] = []
        if self.store is not None:
            s = self.store
            where = ["--root", str(s / "root"), "--runroot", str(s / "run")]
            where += ["--tmpdir", str(s / "tmp")]
        return [self.binary, *where, *args]

    def call(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv(*args),
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            check=False,
        )

    def ok(self, *args: str, timeout: float = 300) -> str:
        """``podman ARGS``' output; PermanentError with what podman said when it fails."""
        out = self.call(*args, timeout=timeout)
        if out.returncode != 0:
            said = (out.stderr.strip() or out.stdout.strip())[-400:]
            raise PermanentError(f"podman {args[0]} {args[1] if len(args) > 1 else ''}: {said}")
        return out.stdout

    def inspect(self, name: str) -> dict[str, Any] | None:
        """``podman container inspect NAME``; None when this Podman has no such container."""
        out = self.call("container", "inspect", "--", name, timeout=60)
        if out.returncode != 0:
            return None
        found: list[dict[str, Any]] = json.loads(out.stdout)
        return found[0] if found else None

    def has_image(self, image_id: str) -> bool:
        return self.call("image", "exists", check_image_id(image_id), timeout=60).returncode == 0

    def checkpoint(self, name: str, archive: Path, *, leave_running: bool = False) -> str:
        """Checkpoint ``name`` into ``archive`` (uncompressed: the data plane decides);
        its checkpoint stays here too (``--keep``) so a rollback restores it in place.
        Returns Podman's statistics (JSON)."""
        args = ["container", "checkpoint", "--export", str(archive), "--compress", "none"]
        args += ["--keep", "--tcp-established", "--print-stats"]
        if leave_running:
            args.append("--leave-running")
        return self.ok(*args, "--", name)

    def restore_import(self, archive: Path) -> None:
        self.ok("container", "restore", "--import", str(archive), "--tcp-established")

    def restore_here(self, name: str) -> None:
        """Restore ``name`` from the checkpoint its own Podman kept."""
        self.ok("container", "restore", "--keep", "--tcp-established", "--", name)

    def remove(self, name: str) -> None:
        self.ok("container", "rm", "--force", "--ignore", "--", name, timeout=120)
