"""How a node's phases talk to a migration's tracker process (workers.tracker.service)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from workers.errors import CapabilityError, PermanentError
from workers.tracker.service import address

ROOT = Path(__file__).resolve().parents[2]
LOG = "tracker.log"


def running(d: Path) -> bool:
    """Whether the tracker of migration dir ``d`` answers."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(address(d))
        return True
    except OSError:
        return False


def start(pid: int, d: Path, timeout_s: float = 10.0) -> None:
    """Start tracking ``pid``'s tree for migration dir ``d`` (once: a running one is kept)."""
    if running(d):
        return
    d.mkdir(parents=True, exist_ok=True)
    with open(d / LOG, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "workers.tracker", "--pid", str(pid), "--dir", str(d)],
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,  # it outlives a worker that dies mid-migration
        )
    deadline = time.monotonic() + timeout_s
    while not running(d):
        if proc.poll() is not None or time.monotonic() > deadline:
            tail = (d / LOG).read_text(errors="replace")[-400:]
            raise PermanentError(f"the dirty tracker did not start: {tail.strip()}")
        time.sleep(0.01)


def ask(d: Path, request: dict[str, Any], timeout_s: float = 600.0) -> dict[str, Any]:
    """Send one request to the tracker of ``d``; its answer, or the error it names."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout_s)
            s.connect(address(d))
            s.sendall(json.dumps(request).encode() + b"\n")
            raw = b""
            while not raw.endswith(b"\n"):
                chunk = s.recv(1 << 16)
                if not chunk:
                    break
                raw += chunk
    except OSError as exc:
        raise PermanentError(
            f"the dirty tracker is gone ({exc.strerror or exc}): the pages written since the "
            "last pass are unknown"
        ) from exc
    reply: dict[str, Any] = json.loads(raw)
    if "error" in reply:
        cls = CapabilityError if reply.get("kind") == "capability" else PermanentError
        raise cls(f"dirty tracker: {reply['error']}")
    return reply


def stop(d: Path) -> bool:
    """End the tracking of ``d`` if a tracker runs (a rollback, a cleanup); whether one did."""
    if not running(d):
        return False
    try:
        ask(d, {"op": "stop"}, timeout_s=30)
    except PermanentError:
        return False
    return True
