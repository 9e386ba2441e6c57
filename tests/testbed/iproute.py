"""The ``ip`` command as functions: run it, read its JSON, list and empty namespaces.

Arguments go to ``ip`` as a list, never through a shell. A failure raises
``PermanentError`` carrying ip's own message; ``missing_ok`` turns "that
device or namespace does not exist" into success, for idempotent clean-ups.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from typing import Any

from workers.errors import PermanentError

_MISSING = ("Cannot find device", "does not exist", "No such file")


def ip(*args: str, missing_ok: bool = False) -> str:
    """Run ``ip args...`` and return its output."""
    done = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    gone = any(message in done.stderr for message in _MISSING)
    if done.returncode != 0 and not (missing_ok and gone):
        raise PermanentError(f"`ip {' '.join(args)}` failed: {done.stderr.strip()}")
    return done.stdout


def ip_json(*args: str, missing_ok: bool = False) -> list[dict[str, Any]]:
    """Run ``ip -j args...`` and return its parsed output."""
    return list(json.loads(ip("-j", *args, missing_ok=missing_ok) or "[]"))


def netns_names() -> list[str]:
    """Names of the named network namespaces (``ip netns list``)."""
    return [entry["name"] for entry in ip_json("netns", "list")]


def link_names() -> list[str]:
    """Names of the host's network interfaces."""
    return [link["ifname"] for link in ip_json("link", "show")]


def kill_netns_processes(ns: str, timeout: float = 3.0) -> None:
    """End every process in namespace ``ns``: SIGTERM, then SIGKILL after ``timeout``."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in ip("netns", "pids", ns, missing_ok=True).split():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), sig)
        deadline = time.monotonic() + timeout
        while ip("netns", "pids", ns, missing_ok=True).split() and time.monotonic() < deadline:
            time.sleep(0.05)
