"""Pre-copy passes: snapshot while the container runs, send what changed.

``precopy`` (kernels with soft-dirty tracking): ``criu pre-dump --track-mem``
chained with ``--prev-images-dir``; each pass's pages go to the destination
whole, the final dump writes only what changed since the last pass.

``precopy`` on the uffd-wp tracker (no soft-dirty, Linux >= 6.7): passes that
read the written pages from the running tree (tasks.node.tracked).

``delta`` (no dirty tracker at all): each pass is a full
``criu dump --leave-running``; only the 4 KiB blocks whose content changed
since the destination's copy are sent (workers.dataplane.delta), and the destination
rebuilds the full image set in REBUILD. Every delta pass freezes the
container for a whole dump: that cost is in each pass's ``freeze_ms``, which
the stop rule weighs.
"""

from __future__ import annotations

import shutil
import time
from typing import Any

from tasks.core.migration import Migration, Phase
from tasks.core.strategy import Strategy
from tasks.node import tracked
from tasks.node.context import (
    NodeContext,
    Progress,
    check_asked_for,
    last_pass,
    remember,
    remembered,
)
from tasks.node.dataplane import send_dir
from workers.dataplane.delta import apply_delta, make_delta


def precopy(ctx: NodeContext, m: Migration, progress: Progress) -> dict[str, Any]:
    """One pass; its result carries the convergence.IterationStats fields under ``pass``."""
    k = len(m.passes) + 1
    d = ctx.images(m.id, f"pass-{k}")
    done = remembered(d, Phase.PRECOPY)
    if done:
        return done
    if not m.passes:
        check_asked_for(ctx, m)
    if tracked.uses_tracker(ctx, m):
        return tracked.tracked_pass(ctx, m, k, progress)
    shutil.rmtree(d, ignore_errors=True)
    prev = last_pass(m)
    since = float(m.results["precopy"]["end"]) if m.passes else time.time()
    if m.strategy is Strategy.DELTA:
        s = ctx.runtime.checkpoint(m.container, d, leave_running=True)
        frozen_until = time.time()
        out = ctx.images(m.id, f"pass-{k}.out")
        shutil.rmtree(out, ignore_errors=True)
        delta = make_delta(ctx.images(m.id, prev) if prev else None, d, out, ctx.page_size)
        sent = send_dir(ctx, m, out, f"pass-{k}.delta", progress)
        shutil.rmtree(out, ignore_errors=True)
        if prev:
            shutil.rmtree(ctx.images(m.id, prev), ignore_errors=True)
        total, changed = delta.blocks_total, delta.blocks_changed
    else:
        s = ctx.runtime.predump(m.container, d, ctx.images(m.id, prev) if prev else None)
        frozen_until = time.time()
        sent = send_dir(ctx, m, d, f"pass-{k}", progress)
        total, changed = s.pages_scanned, s.pages_written
    end = time.time()
    interval = max(end - since, 1e-3)
    stats = {
        "iteration": k,
        "pages_total": total,
        "pages_written": changed,
        "pages_unchanged": total - changed,
        "bytes_sent": sent["bytes"],
        "seconds": max(sent["wall_ms"] / 1000, 1e-6),
        "freeze_ms": s.frozen_ms + s.freezing_ms,
        "dirty_rate_bps": changed * ctx.page_size / interval if prev else 0.0,
    }
    # reconnections that resumed a dropped transfer, over every pass so far
    resumed = int(m.results.get("precopy", {}).get("resumed", 0)) + int(sent["resumed"])
    freeze = {
        "start": frozen_until - stats["freeze_ms"] / 1000,
        "ms": stats["freeze_ms"],
        "image_bytes": s.image_bytes,  # what the freeze wrote: the dump speed, for auto
    }
    return remember(
        d, Phase.PRECOPY, {"pass": stats, "end": end, "resumed": resumed, "pause": freeze}
    )


def rebuild(ctx: NodeContext, m: Migration, progress: Progress) -> dict[str, Any]:
    """Delta only: rebuild the pass's full image set from the last one plus its delta."""

    k = len(m.passes)
    target = ctx.incoming(m.id, f"pass-{k}")
    if not target.exists():
        base = ctx.incoming(m.id, f"pass-{k - 1}") if k > 1 else None
        apply_delta(base, ctx.incoming(m.id, f"pass-{k}.delta"), target)  # base becomes target
    shutil.rmtree(ctx.incoming(m.id, f"pass-{k}.delta"), ignore_errors=True)
    return {"pass": k}
