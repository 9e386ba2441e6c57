"""What each migration phase does on its node: plain functions, no Celery.

Each takes the node's context and the migration record and returns a small
JSON-able result, or raises a FerryError. Each is safe to run twice: a
redelivered phase finds its own earlier work (a marker file) and returns it.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from tasks.machine import Migration, Phase
from workers.errors import BadRequest, PermanentError
from workers.runtime import Runtime
from workers.tokens import issue_token
from workers.transfer import send_files

Progress = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class NodeContext:
    """One node, as its phase tasks see it."""

    node: str
    runtime: Runtime
    node_dir: Path  # this node's own state
    address: str  # host:port of this node's data-plane listener
    secret: bytes
    verify_grace_s: float = 0.2

    def images(self, mid: str) -> Path:
        """Where this node dumps a migration's images (source side)."""
        return self.node_dir / "images" / mid

    def incoming(self, mid: str) -> Path:
        """Where the data plane lands a migration's images (destination side)."""
        return self.node_dir / "incoming" / mid / "images"


def _marker(d: Path, phase: Phase) -> Path:
    return d / f"ferry-{phase.value}.done"


def _remembered(d: Path, phase: Phase) -> dict[str, Any] | None:
    try:
        result: dict[str, Any] = json.loads(_marker(d, phase).read_text())
        return result
    except (OSError, ValueError):
        return None


def _remember(d: Path, phase: Phase, result: dict[str, Any]) -> dict[str, Any]:
    _marker(d, phase).write_text(json.dumps(result))
    return result


def prepare(ctx: NodeContext, m: Migration, progress: Progress) -> dict[str, Any]:
    if _has_live(ctx, m.container) and not _remembered(ctx.incoming(m.id), Phase.RESTORE):
        raise BadRequest(f"a container named {m.container!r} already runs on {ctx.node}")
    ctx.incoming(m.id).parent.mkdir(parents=True, exist_ok=True)
    return {"address": ctx.address}


def dump(ctx: NodeContext, m: Migration, progress: Progress) -> dict[str, Any]:
    d = ctx.images(m.id)
    done = _remembered(d, Phase.DUMP)
    if done:
        return done
    if d.exists():
        shutil.rmtree(d)  # a dump that died half-way: start over
    s = ctx.runtime.checkpoint(m.container, d)
    end = time.time()
    return _remember(d, Phase.DUMP, {
        "frozen_ms": s.frozen_ms, "freezing_ms": s.freezing_ms, "wall_ms": round(s.wall_ms, 3),
        "pages_written": s.pages_written, "image_bytes": s.image_bytes,
        # when the tree was frozen, on this node's clock
        "freeze_start": end - (s.frozen_ms + s.freezing_ms) / 1000, "end": end})


def transfer(ctx: NodeContext, m: Migration, progress: Progress) -> dict[str, Any]:
    d = ctx.images(m.id)
    done = _remembered(d, Phase.TRANSFER)
    if done:
        return done
    address = str(m.results.get("prepare", {}).get("address", ""))
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise PermanentError(f"{m.dst} gave no data-plane address")
    files = sorted(p for p in d.iterdir()
                   if p.is_file() and not p.name.endswith(".done") and p.suffix != ".log")
    total = sum(p.stat().st_size for p in files)
    started = time.monotonic()
    last = [0.0]

    def report(sent: int, _total: int) -> None:
        now = time.monotonic()
        if now - last[0] >= 0.25 or sent >= total:
            last[0] = now
            rate = sent / max(now - started, 1e-6)
            progress({"bytes_sent": sent, "bytes_total": total, "rate_bps": round(rate),
                      "eta_s": round((total - sent) / rate, 2) if rate else None})

    stats = send_files((host, int(port)), lambda: issue_token(ctx.secret, m.id, m.src, m.dst, time.time()),
                       m.id, [(p, p.name) for p in files], subdir="images", progress=report)
    return _remember(d, Phase.TRANSFER, {"bytes": stats.bytes, "files": stats.files,
                                         "wall_ms": round(stats.seconds * 1000, 3),
                                         "resumed": stats.resumed, "end": time.time()})


def restore(ctx: NodeContext, m: Migration, progress: Progress) -> dict[str, Any]:
    d = ctx.incoming(m.id)
    done = _remembered(d, Phase.RESTORE)
    if done:
        return done  # never restore twice
    s = ctx.runtime.restore(m.container, d)
    return _remember(d, Phase.RESTORE, {"pid": s.pid, "restore_ms": s.restore_ms,
                                        "wall_ms": round(s.wall_ms, 3), "end": time.time()})


def verify(ctx: NodeContext, m: Migration, progress: Progress) -> dict[str, Any]:
    time.sleep(ctx.verify_grace_s)
    info = ctx.runtime.get(m.container)
    if info.state != "running":
        raise PermanentError(f"restored {m.container!r} is {info.state} on {ctx.node}, not running")
    return {"pid": info.pid, "memory_bytes": info.memory_bytes}


def cleanup(ctx: NodeContext, m: Migration, progress: Progress) -> dict[str, Any]:
    """After the point of no return: remove the source copy, exactly once."""
    if _has_entry(ctx, m.container):
        ctx.runtime.kill(m.container)
    shutil.rmtree(ctx.images(m.id), ignore_errors=True)
    return {"removed": True}


def abort(ctx: NodeContext, m: Migration, progress: Progress) -> dict[str, Any]:
    """Rollback on the destination: kill a copy this migration restored, drop its images."""
    d = ctx.incoming(m.id)
    killed = False
    if _remembered(d, Phase.RESTORE) and _has_entry(ctx, m.container):
        ctx.runtime.kill(m.container)
        killed = True
    shutil.rmtree(d.parent, ignore_errors=True)
    return {"killed": killed}


def resume(ctx: NodeContext, m: Migration, progress: Progress) -> dict[str, Any]:
    """Rollback on the source: continue the frozen copy, or restore it from its images."""
    d = ctx.images(m.id)
    if not _has_entry(ctx, m.container):
        raise PermanentError(f"{m.container!r} is not in {ctx.node}'s inventory")
    info = ctx.runtime.resume(m.container, d if _remembered(d, Phase.DUMP) else None)
    shutil.rmtree(d, ignore_errors=True)
    return {"pid": info.pid, "state": info.state}


def _has_entry(ctx: NodeContext, name: str) -> bool:
    return any(c.name == name for c in ctx.runtime.list())


def _has_live(ctx: NodeContext, name: str) -> bool:
    return any(c.name == name and c.state != "exited" for c in ctx.runtime.list())


HANDLERS: dict[Phase, Callable[[NodeContext, Migration, Progress], dict[str, Any]]] = {
    Phase.PREPARE: prepare, Phase.DUMP: dump, Phase.TRANSFER: transfer, Phase.RESTORE: restore,
    Phase.VERIFY: verify, Phase.CLEANUP: cleanup, Phase.ABORT: abort, Phase.RESUME: resume,
}
