"""Filesystem sync in a migration: the declared directories' rsync passes and their copies.

The destination claims the directories and starts one rsync daemon per
directory in PREPARE (:func:`open_targets`; each address signed, like the
data plane's); the source pushes a first pass in SYNC while the container
runs, and what changed in FINAL_SYNC, after the final dump froze it. The
destination stops its daemons before it restores (:func:`close_targets`).
A rollback removes the destination's partial copies (:func:`drop`); after the
point of no return CLEANUP removes the source's (:func:`remove_source`): the
container runs on the destination with its own copy, a stale one left behind
would only be mistaken for data (and would keep it from ever moving back).
The heartbeat's garbage collector (:func:`collect`) stops any daemon a
finished migration left running.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

from tasks.core.migration import Migration, State
from tasks.messaging import auth
from tasks.node.context import NodeContext, Progress
from workers.dirsync import dirs as syncdirs
from workers.dirsync.rsync import SyncStats, rsync_push
from workers.errors import PermanentError

FROZEN_TIMEOUT_S = 10.0  # rsync I/O silence that ends a freeze-window pass
HEARTBEAT_S = 5.0  # a long first pass reports progress this often (the watchdog waits 150 s)


def state_dir(node_dir: Path, mid: str) -> Path:
    """Where the destination keeps a migration's claim and daemons."""
    return node_dir / "fsync" / mid


def _rules(ctx: NodeContext, m: Migration) -> tuple[tuple[Path, ...], Path]:
    return ctx.sync_roots, ctx.container_root / m.container


def open_targets(ctx: NodeContext, m: Migration) -> dict[str, Any]:
    """Destination, in PREPARE: claim the dirs, start their daemons; their signed addresses."""
    state = state_dir(ctx.node_dir, m.id)
    syncdirs.claim(state, m.sync, *_rules(ctx, m))
    targets = syncdirs.start_targets(state, m.id, ctx.secret, ctx.host, ctx.sync_ports)
    for t in targets:
        t["address"] = f"{ctx.host}:{t.pop('port')}"
        t["mac"] = auth.sign(
            ctx.secret, "rsync", m.id, ctx.node, t["dir"], t["address"], t["module"]
        )
    return {"sync": targets}


def close_targets(ctx: NodeContext, m: Migration) -> float:
    """Destination, before the restore: stop the daemons; how long it took (ms)."""
    started = time.monotonic()
    syncdirs.stop_targets(state_dir(ctx.node_dir, m.id), m.id)
    return round((time.monotonic() - started) * 1000, 3)


def drop(ctx: NodeContext, m: Migration) -> list[str]:
    """Destination, in ABORT: stop the daemons, remove what this migration wrote."""
    state = state_dir(ctx.node_dir, m.id)
    syncdirs.stop_targets(state, m.id)
    return syncdirs.drop_partial(state)


def remove_source(ctx: NodeContext, m: Migration) -> list[str]:
    """Source, in CLEANUP (past the point of no return): remove its copies of the dirs.

    A dir another migration has claimed here since (the container came back)
    is that migration's copy now, and stays.
    """
    claimed = {
        d
        for c in (ctx.node_dir / "fsync").glob("m-*")
        if c.name != m.id
        for d in syncdirs.claimed(c)
    }
    return syncdirs.remove([d for d in m.sync if d not in claimed], *_rules(ctx, m))


def collect(node_dir: Path, state_of: Callable[[str], State | None]) -> list[str]:
    """Stop the daemons of every finished migration; drop a rolled-back one's partial copies.

    Only ROLLED_BACK removes data: a DONE migration's copy is the container's,
    and after a FAILED one (or a record gone) a copy may be in use here.
    """
    out = []
    for state in sorted((node_dir / "fsync").glob("m-*")):
        s = state_of(state.name)
        if s is not None and not s.final:
            continue
        syncdirs.stop_targets(state, state.name)
        if s is State.ROLLED_BACK:
            syncdirs.drop_partial(state)
        else:
            syncdirs.forget(state)
        out.append(state.name)
    return out


def sync(ctx: NodeContext, m: Migration, progress: Progress) -> dict[str, Any]:
    """Source: the first pass, while the container runs."""
    return _push(ctx, m, progress, frozen=False)


def final_sync(ctx: NodeContext, m: Migration, progress: Progress) -> dict[str, Any]:
    """Source, inside the freeze window: what changed since the first pass."""
    return _push(ctx, m, progress, frozen=True)


def _push(ctx: NodeContext, m: Migration, progress: Progress, frozen: bool) -> dict[str, Any]:
    declared = ctx.runtime.get(m.container).sync  # the inventory is the authority
    if tuple(declared) != m.sync:
        raise PermanentError(
            f"{m.container!r} declares sync dirs {list(declared)} on {ctx.node}, "
            f"the migration {list(m.sync)}"
        )
    syncdirs.check_dirs(m.sync, *_rules(ctx, m), exist=True)
    targets = {t["dir"]: t for t in m.results.get("prepare", {}).get("sync", [])}
    stats = []
    for d in m.sync:
        t = targets.get(d)
        if t is None:
            raise PermanentError(f"{m.dst} opened no rsync target for {d}")
        auth.verify(ctx.secret, t.get("mac"), "rsync", m.id, m.dst, d, t["address"], t["module"])
        host, _, port = str(t["address"]).rpartition(":")
        stats.append(
            _one(
                progress,
                d,
                frozen,
                partial(
                    rsync_push,
                    Path(d),
                    host,
                    int(port),
                    str(t["module"]),
                    m.id,
                    ctx.secret,
                    m.options.bandwidth_bps,
                    timeout_s=FROZEN_TIMEOUT_S if frozen else 60,
                ),
            )
        )
    return {
        "dirs": len(stats),
        "bytes": sum(s.bytes_sent for s in stats),
        "files": sum(s.files for s in stats),
        "deleted": sum(s.deleted for s in stats),
        "wall_ms": round(sum(s.seconds for s in stats) * 1000, 3),
        "end": time.time(),
    }


def _one(progress: Progress, d: str, frozen: bool, push: Callable[[], SyncStats]) -> SyncStats:
    """Run one push; a first pass says it is alive every HEARTBEAT_S (rsync says nothing)."""
    if frozen:
        return push()
    started = time.monotonic()
    with ThreadPoolExecutor(1, thread_name_prefix="ferry-rsync") as pool:
        job = pool.submit(push)
        while True:
            try:
                return job.result(timeout=HEARTBEAT_S)
            except TimeoutError:
                progress({"sync_dir": d, "elapsed_s": round(time.monotonic() - started, 1)})
