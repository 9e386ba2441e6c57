"""What a migration cost: downtime split into its parts, from the phase results.

Pure: reads the record's phase results (timestamps from the nodes' clocks,
which a cluster keeps in step with NTP/chrony) and returns plain numbers.
"""

from __future__ import annotations

from typing import Any

from tasks.core.machine import Migration


def downtime(m: Migration) -> dict[str, float] | None:
    """Downtime and its parts, in ms; None until the container was restored.

    downtime = from the moment CRIU froze the tree on the source to the moment
    the restored tree resumed on the destination. Its parts: ``criu_freeze``
    (CRIU's own frozen time in the dump), ``delta`` (delta only: finding the
    changed blocks), ``wire`` (images over the data plane), ``fsync`` (a
    container with sync dirs: rsync's final pass, and stopping the
    destination's daemons), ``rebuild`` (delta only: the destination
    rebuilding the image set), ``restore`` (the criu restore call) and
    ``overhead`` (everything else: queues, task start, bookkeeping). When the
    dump streamed its pages to the destination's page server, the wire
    overlaps the dump: CRIU's time writing pages (its ``memwrite``) moves
    from ``criu_freeze`` to ``wire``.
    """
    r = m.results
    dump, xfer, rest = r.get("dump"), r.get("transfer"), r.get("restore")
    if not (dump and rest):
        return None
    total = (rest["end"] - dump["freeze_start"]) * 1000
    streamed = dump.get("memwrite_ms", 0.0) if "pages" in dump else 0.0
    criu = dump["frozen_ms"] + dump["freezing_ms"] - streamed
    delta = xfer.get("delta_ms", 0.0) if xfer else 0.0
    wire = (xfer["wall_ms"] if xfer else 0.0) + streamed
    rebuild = rest.get("rebuild_ms", 0.0)
    stop = rest.get("sync_stop_ms", 0.0)
    fsync = r.get("final_sync", {}).get("wall_ms", 0.0) + stop
    restore = rest["wall_ms"] - rebuild - stop
    return {
        "downtime_ms": round(total, 1),
        "criu_freeze_ms": round(criu, 1),
        "delta_ms": round(delta, 1),
        "wire_ms": round(wire, 1),
        "fsync_ms": round(fsync, 1),
        "rebuild_ms": round(rebuild, 1),
        "restore_ms": round(restore, 1),
        "overhead_ms": round(total - criu - delta - wire - fsync - rebuild - restore, 1),
    }


def summary(m: Migration) -> dict[str, Any]:
    """The one-line facts of a migration: state, strategy, downtime, total time, bytes."""
    d = downtime(m) or {}
    xfer = m.results.get("transfer", {})
    return {
        "id": m.id,
        "container": m.container,
        "src": m.src,
        "dst": m.dst,
        "state": m.state.value,
        "strategy": m.strategy,
        "total_s": round(m.updated - m.created, 3),
        # image files, and the pages a cold dump streamed into the destination's CRIU
        "bytes": xfer.get("bytes", 0) + m.results.get("dump", {}).get("pages", {}).get("bytes", 0),
        "sync_bytes": sum(m.results.get(p, {}).get("bytes", 0) for p in ("sync", "final_sync")),
        **d,
        "errors": list(m.errors),
    }


def one_line(m: Migration) -> str:
    s = summary(m)
    if m.state.value == "done":
        return (
            f"{m.container} moved {m.src} -> {m.dst} ({s['strategy']}): downtime "
            f"{s.get('downtime_ms', 0):.0f} ms, total {s['total_s']:.2f} s, "
            f"{_size(s['bytes'])} sent"
        )
    why = m.errors[-1] if m.errors else ""
    return f"{m.container} {m.state.value} ({m.src} -> {m.dst}): {why}"


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} GiB"
