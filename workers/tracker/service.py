"""The tracker process: one per migration on its source, holding its tree's userfaultfds.

The node's phase tasks stay thin: the first pre-copy pass starts
``python -m workers.tracker --pid PID --dir DIR`` (a session of its own, so a
worker that dies and comes back finds it still tracking) and every later step
asks it over a unix socket, one JSON request and one JSON answer per
connection:

``{"op": "scan", "pack": "pass-2/pages.pack"}``
    one pass (workers.tracker.tracker): the pages written since the last go
    into that pack; answers the pass's numbers.
``{"op": "final", "images": "final", "out": "final.pack"}``
    after the final dump (the tree is stopped): split the dump against what
    the passes sent (workers.tracker.pack.split_final), then end.
``{"op": "stop"}``
    end the tracking (a rollback, a cleanup).

Names are relative to DIR and checked; the socket is in the abstract namespace
(a node dir's path can be longer than a socket path may be) and answers only
its own user. It ends on its own when the tree is gone or nobody asked
anything for ``--idle`` seconds: the registrations go with its fds.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import socket
import struct
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from workers import procs
from workers.errors import BadRequest, CapabilityError, FerryError
from workers.tracker import inject
from workers.tracker.pack import PackWriter, split_final
from workers.tracker.tracker import Tracker

_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}(/[A-Za-z0-9_.-]{1,64})?\Z")
MAX_REQUEST = 4096


def address(d: Path) -> str:
    """The abstract socket name of the tracker of migration dir ``d``."""
    return "\0ferry-tracker-" + hashlib.sha256(str(d.resolve()).encode()).hexdigest()[:32]


def inside(d: Path, name: object) -> Path:
    """``d / name`` for a plain relative name (one optional subdir); BadRequest otherwise."""
    if not isinstance(name, str) or not _NAME.match(name) or ".." in name:
        raise BadRequest(f"bad tracker path {name!r:.80}")
    return d / name


def serve(pid: int, d: Path, idle_s: float) -> None:
    """Track ``pid``'s tree until asked to stop (or idle, or the tree is gone)."""
    tracker = Tracker(pid)
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    srv.bind(address(d))
    srv.listen(4)
    srv.settimeout(min(idle_s, 5.0))
    last = time.monotonic()
    try:
        while procs.alive(pid) and time.monotonic() - last < idle_s:
            try:
                conn, _ = srv.accept()
            except TimeoutError:
                continue
            last = time.monotonic()
            with conn:
                if not _same_user(conn):
                    continue
                done = _answer(conn, tracker, d)
            if done:
                return
    finally:
        tracker.close()
        srv.close()


def _same_user(conn: socket.socket) -> bool:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    uid: int = struct.unpack("3i", creds)[1]
    return uid == os.getuid()


def _answer(conn: socket.socket, tracker: Tracker, d: Path) -> bool:
    """Answer one request; True when the tracking is over."""
    conn.settimeout(600)
    raw = b""
    while not raw.endswith(b"\n") and len(raw) < MAX_REQUEST:
        chunk = conn.recv(MAX_REQUEST)
        if not chunk:
            break
        raw += chunk
    if not raw:
        return False  # a probe that it answers (client.running)
    over = False
    try:
        req = json.loads(raw)
        op = req.get("op") if isinstance(req, dict) else None
        reply: dict[str, Any]
        if op == "scan":
            before, path = inject.stopped_ms(), inside(d, req.get("pack"))
            part = path.with_name(path.name + ".part")
            try:
                with PackWriter(part, tracker.page) as pack:
                    stats = tracker.scan(pack)
            except BaseException:
                tracker.forget()  # what it read never leaves: nothing counts as sent
                raise
            os.replace(part, path)
            reply = {**asdict(stats), "stopped_ms": round(inject.stopped_ms() - before, 3)}
        elif op == "final":
            t0 = time.monotonic()
            clean = tracker.finish()
            scan_ms = (time.monotonic() - t0) * 1000
            split = split_final(inside(d, req.get("images")), clean, inside(d, req.get("out")))
            reply = {**asdict(split), "final_scan_ms": round(scan_ms, 3)}
            over = True
        elif op == "stop":
            tracker.close()
            reply, over = {"stopped": True}, True
        else:
            reply = {"error": f"unknown tracker request {op!r:.40}", "kind": "capability"}
    except FerryError as exc:
        kind = "capability" if isinstance(exc, CapabilityError) else "permanent"
        reply = {"error": str(exc), "kind": kind}
    except (OSError, ValueError) as exc:
        reply = {"error": f"{type(exc).__name__}: {exc}", "kind": "permanent"}
    with contextlib.suppress(OSError):  # the asker gave up: it asks again, or rolls back
        conn.sendall(json.dumps(reply).encode() + b"\n")
    return over
