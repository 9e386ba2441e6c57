"""Pre-copy on the uffd-wp tracker: passes that never freeze the tree.

Where the source has no soft-dirty but its probe found the uffd-wp tracker
(workers.tracker), ``precopy`` runs this way:

- PRECOPY (source): the first pass starts the migration's tracker process;
  each pass asks it for the pages written since the last one, read from the
  running tree into ``pass-K/pages.pack``, and sends that pack. A pass that
  is tried again sends the pack it already made (a new scan would leave out
  what the first one read).
- DUMP (source): ``criu dump --leave-stopped`` as for cold, then the tracker
  scans the stopped tree once more and splits the dump: everything but the
  pages the destination already holds goes into ``final.pack``.
- TRANSFER sends ``final.pack``; RESTORE (destination) rebuilds the full
  images from every pass's pack and the final one, each pages image checked
  against the source's BLAKE3 before CRIU may restore it.

The record names the tracker: ``results.precopy.tracker`` is ``uffd-wp``.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from tasks.core.migration import Migration, Phase
from tasks.core.strategy import Strategy
from tasks.node.context import NodeContext, Progress, remember
from tasks.node.dataplane import send_dir
from workers.records import Tracker
from workers.tracker import client
from workers.tracker.pack import PACK, build_final

FINAL_PACK = "final.pack"


def uses_tracker(ctx: NodeContext, m: Migration) -> bool:
    """Whether this migration's passes run (or ran) on the uffd-wp tracker."""
    if m.strategy is not Strategy.PRECOPY:
        return False
    if m.passes:
        return bool(m.results.get("precopy", {}).get("tracker") == Tracker.UFFD_WP)
    return ctx.runtime.capabilities().tracker == Tracker.UFFD_WP


def _root(ctx: NodeContext, m: Migration) -> Path:
    return ctx.images(m.id).parent


def tracked_pass(ctx: NodeContext, m: Migration, k: int, progress: Progress) -> dict[str, Any]:
    """Pass ``k``: the pages written since pass ``k - 1``, read while the tree runs, sent."""
    root, d = _root(ctx, m), ctx.images(m.id, f"pass-{k}")
    scanned = root / f"pass-{k}.scan.json"
    if not (d / PACK).exists():
        if k == 1:
            client.start(ctx.runtime.get(m.container).pid, root)
        d.mkdir(parents=True, exist_ok=True)
        at = time.time()
        s = client.ask(root, {"op": "scan", "pack": f"pass-{k}/{PACK}"})
        scanned.write_text(json.dumps({**s, "at": at}))
    s = json.loads(scanned.read_text())
    sent = send_dir(ctx, m, d, f"pass-{k}", progress)
    end = time.time()
    since = float(m.results["precopy"]["end"]) if m.passes else s["at"]
    total, changed = int(s["pages_scanned"]), int(s["pages_written"])
    stats = {
        "iteration": k,
        "pages_total": total,
        "pages_written": changed,
        "pages_unchanged": max(total - changed, 0),
        "bytes_sent": sent["bytes"],
        "seconds": max(sent["wall_ms"] / 1000, 1e-6),
        # the tree never freezes; a new process is stopped for two injected system calls
        "freeze_ms": s["stopped_ms"],
        "dirty_rate_bps": changed * ctx.page_size / max(end - since, 1e-3) if m.passes else 0.0,
    }
    resumed = int(m.results.get("precopy", {}).get("resumed", 0)) + int(sent["resumed"])
    result: dict[str, Any] = {
        "pass": stats,
        "end": end,
        "resumed": resumed,
        "tracker": str(Tracker.UFFD_WP),
        "scan_ms": s["scan_ms"],
        "read_ms": s["read_ms"],
        "new_ranges": s["new_ranges"],
    }
    if s["stopped_ms"]:
        result["pause"] = {"start": s["at"], "ms": s["stopped_ms"]}
    remember(d, Phase.PRECOPY, result)
    (d / PACK).unlink()  # on the destination now; the marker answers a second try
    return result


def split_dump(ctx: NodeContext, m: Migration) -> dict[str, Any]:
    """After the final dump (the tree stopped): what of it the destination lacks."""
    shutil.rmtree(ctx.images(m.id, FINAL_PACK), ignore_errors=True)  # a try that died
    return client.ask(_root(ctx, m), {"op": "final", "images": "final", "out": FINAL_PACK})


def send_final(ctx: NodeContext, m: Migration, progress: Progress) -> dict[str, Any]:
    return send_dir(ctx, m, ctx.images(m.id, FINAL_PACK), FINAL_PACK, progress, frozen=True)


def rebuild_final(ctx: NodeContext, m: Migration, target: Path) -> None:
    """On the destination: the full final images from the passes' packs and the final one."""
    packs = [ctx.incoming(m.id, f"pass-{k}") / PACK for k in range(1, len(m.passes) + 1)]
    build_final(ctx.incoming(m.id, FINAL_PACK), packs, target)


def stop(ctx: NodeContext, m: Migration) -> bool:
    """End the migration's tracking on this node, if a tracker runs."""
    return client.stop(_root(ctx, m))
