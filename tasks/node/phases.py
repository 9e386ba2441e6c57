"""What each migration phase does on its node: plain functions, no Celery.

Each takes the node's context and the migration record and returns a small
JSON-able result, or raises a FerryError. Each is safe to run twice: a
redelivered phase finds its own earlier work (a marker file) and returns it.

Image dirs of migration M: on the source ``<images>/M/{pass-K,final,...}``,
landed on the destination as ``<node>/incoming/M/{pass-K,final,...}``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tasks.core.migration import Migration, Phase, State
from tasks.core.pauses import joined
from tasks.core.retention import logs_to_drop
from tasks.core.strategy import Strategy
from tasks.messaging import auth
from tasks.node import syncpasses, tracked
from tasks.node.context import (
    FINAL,
    NodeContext,
    Progress,
    check_asked_for,
    last_pass,
    remember,
    remembered,
)
from tasks.node.dataplane import (
    drop_tail,
    pages_target,
    send_dir,
    send_final,
    start_tail,
    streams_pages,
    tails_pages,
)
from workers import procs
from workers.criu import faultwatch
from workers.dataplane.delta import apply_delta, make_delta
from workers.dataplane.lazylink import LOOPBACK, hang_up, open_lazy
from workers.dataplane.pagestream import check_pages
from workers.dataplane.tokens import issue_token
from workers.errors import BadRequest, CriuError, PermanentError
from workers.records import ContainerInfo
from workers.runtimes.base import LazySource

VERIFY_POLL_S = 0.005  # how often verify looks whether the restored tree ran


def prepare(ctx: NodeContext, m: Migration, progress: Progress) -> dict[str, Any]:
    if _has(ctx, m.container, live=True) and not remembered(ctx.incoming(m.id), Phase.RESTORE):
        raise BadRequest(f"a container named {m.container!r} already runs on {ctx.node}")
    admitted = ctx.runtime.admit(m.container)  # what cannot land here is refused now
    ctx.incoming(m.id).parent.mkdir(parents=True, exist_ok=True)
    return {
        "admit": admitted,
        "address": ctx.address,
        "address_mac": auth.sign(ctx.secret, "address", m.id, ctx.node, ctx.address),
        **(syncpasses.open_targets(ctx, m) if m.sync else {}),
    }


def dump(ctx: NodeContext, m: Migration, progress: Progress) -> dict[str, Any]:
    d = ctx.images(m.id)
    done = remembered(d, Phase.DUMP)
    if done:
        return done
    check_asked_for(ctx, m)
    if d.exists():
        shutil.rmtree(d)  # a dump that died half-way: start over
    prev = last_pass(m)
    on_tracker = tracked.uses_tracker(ctx, m)
    parent = ctx.images(m.id, prev) if prev and m.strategy.parent_images else None
    if on_tracker:
        parent = None  # the passes left packs, not CRIU parent images
        if m.lazy:  # a fallback to post-copy: CRIU serves every page itself
            tracked.stop(ctx, m)
    if m.lazy:  # the page server on loopback, reached through this node's data plane
        port = free_port(LOOPBACK)
        frozen_at = ctx.runtime.checkpoint_lazy(m.container, d, LOOPBACK, port, parent)
        server = ctx.address
        end = time.time()
        return remember(
            d,
            Phase.DUMP,
            {
                "freeze_start": frozen_at,
                "page_server": server,
                "page_server_mac": auth.sign(ctx.secret, "address", m.id, ctx.node, server),
                # the dump froze the tree at frozen_at and returns
                # once all but the pages are written
                "frozen_ms": round((end - frozen_at) * 1000, 3),
                "freezing_ms": 0.0,
                "end": end,
            },
        )
    # Pages straight into the destination's CRIU where the planner allows it
    # (tasks.core.transport.page_server: a cold dump, which has no parent) and it pays.
    streamed = parent is None and streams_pages(ctx, m)
    carried(ctx, m, d)
    # Else the pages image goes out as it is written, where TRANSFER sends these files.
    delta = m.strategy is Strategy.DELTA and prev is not None
    tail = None
    if not (streamed or on_tracker or delta) and tails_pages(ctx, m):
        d.mkdir(parents=True, exist_ok=True)
        tail = start_tail(ctx, m, d, FINAL)
    try:
        s = ctx.runtime.checkpoint(
            m.container,
            d,
            parent=parent,
            pages=pages_target(ctx, m, FINAL, progress) if streamed else None,
        )
    except BaseException:
        drop_tail(m)
        raise
    end = time.time()
    result: dict[str, Any] = {
        "frozen_ms": s.frozen_ms,
        "freezing_ms": s.freezing_ms,
        "wall_ms": round(s.wall_ms, 3),
        "pages_written": s.pages_written,
        "image_bytes": s.image_bytes,
        # when the tree was frozen, on this node's clock
        "freeze_start": end - (s.frozen_ms + s.freezing_ms) / 1000,
        "end": end,
    }
    if s.pages is not None:
        # CRIU's memwrite time is its pages crossing the wire, inside the freeze
        result.update(pages=s.pages.to_dict(), memwrite_ms=s.memwrite_ms)
    if tail is not None:  # its rest goes out while TRANSFER sends the other images
        result["tail"] = tail.written()
    if on_tracker:  # inside the freeze: what the destination lacks of the dump
        result["tracker"] = tracked.split_dump(ctx, m)
        result["end"] = time.time()
    return remember(d, Phase.DUMP, result)


def transfer(ctx: NodeContext, m: Migration, progress: Progress) -> dict[str, Any]:
    d = ctx.images(m.id)
    done = remembered(d, Phase.TRANSFER)
    if done:
        return done
    prev = last_pass(m)
    if "tracker" in m.results.get("dump", {}):
        result = tracked.send_final(ctx, m, progress)
    elif m.strategy is Strategy.DELTA and prev and not m.lazy:
        out = ctx.images(m.id, "final.out")
        shutil.rmtree(out, ignore_errors=True)
        delta = make_delta(ctx.images(m.id, prev), d, out, ctx.page_size)
        result = {
            **send_dir(ctx, m, out, "final.delta", progress, frozen=True),
            "delta_ms": round(delta.seconds * 1000, 3),
            "bytes_total": delta.bytes_total,
        }
    else:
        result = send_final(ctx, m, d, FINAL, progress)
    return remember(d, Phase.TRANSFER, {**result, "end": time.time()})


def restore(ctx: NodeContext, m: Migration, progress: Progress) -> dict[str, Any]:
    d = ctx.incoming(m.id)
    done = remembered(d, Phase.RESTORE)
    if done:
        return done  # never restore twice
    started = time.monotonic()
    # Nothing may write the synced dirs any more (and unmunged symlinks are back).
    sync_stop_ms = syncpasses.close_targets(ctx, m) if m.sync else 0.0
    prev = last_pass(m)
    rebuild_ms = 0.0
    if m.strategy is Strategy.DELTA and prev and not m.lazy:
        if not d.exists():  # the last pass, patched in place, becomes it once verified
            apply_delta(ctx.incoming(m.id, prev), ctx.incoming(m.id, "final.delta"), d)
        rebuild_ms = (time.monotonic() - started) * 1000
    elif "tracker" in m.results["dump"]:
        if not d.exists():  # every pages image checked against the source's BLAKE3
            tracked.rebuild_final(ctx, m, d)
        rebuild_ms = (time.monotonic() - started) * 1000
    elif prev and m.strategy.parent_images:
        link = d / "parent"
        if not link.is_symlink():
            os.symlink(f"../{prev}", link)
    if "pages" in m.results["dump"]:
        check_pages(m.results["dump"]["pages"], d)  # never restore pages that differ
    s = ctx.runtime.restore(m.container, d, page_server=lazy_source(ctx, m) if m.lazy else None)
    faultwatch.start(s.pid, d, ctx.pages_timeout_s)  # post-copy: when it waits for pages
    return remember(
        d,
        Phase.RESTORE,
        {
            "pid": s.pid,
            "restore_ms": s.restore_ms,
            "rebuild_ms": round(rebuild_ms, 3),
            "sync_stop_ms": sync_stop_ms,
            "wall_ms": round((time.monotonic() - started) * 1000, 3),
            "end": time.time(),
        },
    )


def pages(ctx: NodeContext, m: Migration, progress: Progress) -> dict[str, Any]:
    """Post-copy: wait until the destination has pulled every page."""
    started = time.monotonic()

    def served(sent: int) -> None:
        rate = sent / max(time.monotonic() - started, 1e-6)
        total = m.options.memory_bytes or None  # about what the tree holds
        eta = (total - sent) / rate if total and rate and sent < total else None
        progress(
            {
                "bytes_sent": sent,
                "bytes_total": total,
                "rate_bps": round(rate),
                "eta_s": None if eta is None else round(eta, 2),
                "stream": "lazy pages",
            }
        )

    s = ctx.runtime.wait_lazy(m.container, ctx.images(m.id), ctx.pages_timeout_s, served)
    end = time.time()
    # CRIU's stats for a lazy dump do not count the pages served later: say
    # how long after the restore the last page arrived instead.
    after = end - float(m.results["restore"]["end"])
    return {
        "wall_ms": round(s.wall_ms, 3),
        "last_page_after_restore_ms": round(after * 1000, 1),
        "end": end,
    }


# The stalls a post-copy restore reports as pauses: those a workload feels (its
# waits joined as tasks.core.pauses.joined says), and no more than fit a record.
MIN_STALL_MS = 10.0
MAX_STALLS = 64


def verify(ctx: NodeContext, m: Migration, progress: Progress) -> dict[str, Any]:
    """The restored tree runs: it was scheduled since the restore, and has not exited."""
    info, ran_ms = ran(ctx, m.container)
    if info.state != "running":
        raise PermanentError(f"restored {m.container!r} is {info.state} on {ctx.node}, not running")
    # The images (and the restore marker an ABORT relies on) stay until the
    # migration is final: the node's garbage collector (collect) drops them.
    result: dict[str, Any] = {"pid": info.pid, "memory_bytes": info.memory_bytes, "ran_ms": ran_ms}
    if m.lazy:  # every page is here now (PAGES came first): what came over the network
        lazy = ctx.runtime.lazy_report(ctx.incoming(m.id))
        felt = sorted(joined(lazy.stalls), key=lambda s: -s[1])[:MAX_STALLS]
        result |= {
            "lazy_bytes": lazy.bytes,
            "faults": lazy.faults,
            "fault_wait_ms": round(sum(ms for _, ms in lazy.stalls), 1),
            "stalls": sorted(s for s in felt if s[1] >= MIN_STALL_MS),
        }
    return result


def ran(ctx: NodeContext, name: str) -> tuple[ContainerInfo, float | None]:
    """Wait until ``name``'s tree ran since the restore, for ``verify_grace_s`` at most.

    Its info then, and the ms until it ran: None when it did not run in the
    grace (blocked on input, say) though it did not exit either. A model with
    no process to watch (pid 0: the sim runtime) resumes at once.
    """
    started = time.monotonic()
    info = ctx.runtime.get(name)
    if info.pid <= 0 or info.state != "running":
        return info, 0.0 if info.pid <= 0 else None
    before = procs.activity(info.pid)
    while (waited := time.monotonic() - started) < ctx.verify_grace_s:
        if procs.activity(info.pid) != before:  # it ran (or a task of it exited: look)
            return ctx.runtime.get(name), round(waited * 1000, 1)
        time.sleep(VERIFY_POLL_S)
    return ctx.runtime.get(name), None


def collect(node_dir: Path, state_of: Callable[[str], State | None]) -> list[str]:
    """Drop the image dirs of every finished migration on this node (and of any whose
    record is gone), stop its rsync daemons; the ids dropped.
    """
    dropped = []
    for side in ("images", "incoming"):
        for d in sorted((node_dir / side).glob("m-*")):
            state = state_of(d.name)
            if d.is_dir() and (state is None or state.final):
                drop_images(node_dir, d, d.name)
                dropped.append(d.name)
    return dropped + syncpasses.collect(node_dir, state_of)


def drop_images(node_dir: Path, d: Path, mid: str) -> None:
    """Remove a migration's image dirs, keeping CRIU's logs under ``<node>/logs/<mid>``."""
    if d.exists():
        keep = node_dir / "logs" / mid
        keep.mkdir(parents=True, exist_ok=True)
        for log in d.glob("*/*.log"):
            shutil.copy2(log, keep / f"{log.parent.name}-{log.name}")
    shutil.rmtree(d, ignore_errors=True)


def prune_logs(node_dir: Path, indexed: Callable[[list[str]], list[bool]]) -> list[str]:
    """Drop the kept CRIU logs (``logs/<mid>``) of migrations whose record the
    coordinator pruned (``indexed`` says which are still in the index); the ids."""
    kept = sorted(d.name for d in (node_dir / "logs").glob("m-*") if d.is_dir())
    drop = logs_to_drop(kept, indexed(kept)) if kept else []
    for mid in drop:
        shutil.rmtree(node_dir / "logs" / mid, ignore_errors=True)
    return drop


def cleanup(ctx: NodeContext, m: Migration, progress: Progress) -> dict[str, Any]:
    """After the point of no return: remove the source copy, exactly once."""
    tracked.stop(ctx, m)
    if _has(ctx, m.container):
        ctx.runtime.kill(m.container)
    drop_images(ctx.node_dir, ctx.images(m.id).parent, m.id)
    return {"removed": True, "sync_removed": syncpasses.remove_source(ctx, m) if m.sync else []}


def abort(ctx: NodeContext, m: Migration, progress: Progress) -> dict[str, Any]:
    """Rollback on the destination: kill a copy this migration restored, drop its images."""
    d = ctx.incoming(m.id)
    killed = False
    if remembered(d, Phase.RESTORE) and _has(ctx, m.container):
        ctx.runtime.kill(m.container)
        killed = True
    drop_images(ctx.node_dir, d.parent, m.id)
    return {"killed": killed, "sync_removed": syncpasses.drop(ctx, m) if m.sync else []}


def resume(ctx: NodeContext, m: Migration, progress: Progress) -> dict[str, Any]:
    """Rollback on the source: continue the frozen copy, or restore it from its images."""
    d = ctx.images(m.id)
    dumped = remembered(d, Phase.DUMP)
    tracked.stop(ctx, m)  # its registrations end with it; the tree runs on untracked
    drop_tail(m)
    if not _has(ctx, m.container):
        if not d.parent.exists():  # never dumped here, and gone since: nothing to resume
            return {"state": "gone", "end": time.time()}
        raise PermanentError(f"{m.container!r} is not in {ctx.node}'s inventory")
    if dumped and "page_server" in dumped:
        _end_lazy_dump(ctx, m)
    if dumped and ("page_server" in dumped or "pages" in dumped):
        dumped = None  # its pages are not on this node's disk to restore from
    info = ctx.runtime.resume(m.container, d if dumped else None)
    drop_images(ctx.node_dir, d.parent, m.id)
    return {"pid": info.pid, "state": info.state, "end": time.time()}


def _end_lazy_dump(ctx: NodeContext, m: Migration) -> None:
    """End a post-copy dump that still waits for its destination, so the tree can be resumed."""
    d = ctx.images(m.id)
    # a peer that hangs up at once ends the page transfer: CRIU takes it for the end of
    # its session and leaves the tree stopped (or the page server is gone already)
    hang_up(d)
    with contextlib.suppress(CriuError):  # or the transfer failed and CRIU let the tree go
        ctx.runtime.wait_lazy(m.container, d, 30)


def carried(ctx: NodeContext, m: Migration, d: Path) -> int:
    """What the destination lacks beside the checkpoint (a Podman image), written into
    ``d`` while the container still runs."""
    return ctx.runtime.carry(m.container, d, m.results.get("prepare", {}).get("admit", {}))


def lazy_source(ctx: NodeContext, m: Migration) -> LazySource:
    """How a post-copy restore reaches the source's page server: the source's data
    plane, as its dump signed it, with a fresh token for this migration."""
    server = str(m.results["dump"]["page_server"])
    auth.verify(
        ctx.secret, m.results["dump"].get("page_server_mac"), "address", m.id, m.src, server
    )
    host, _, port = server.rpartition(":")

    def connect() -> socket.socket:
        token = issue_token(ctx.secret, m.id, m.dst, m.src, time.time())
        return open_lazy((host, int(port)), token, m.id, FINAL)

    return connect


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def _has(ctx: NodeContext, name: str, live: bool = False) -> bool:
    return any(
        c.name == name and (not live or c.state != "exited") for c in ctx.runtime.containers()
    )
