"""What a migration cost: its pauses, the final one split into parts, the bytes.

Pure: reads the record's phase results (timestamps from the nodes' clocks,
which a cluster keeps in step with NTP/chrony) and returns plain numbers.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, tzinfo
from typing import Any

from tasks.core.migration import Migration
from tasks.core.pauses import longest, total_ms


def final_pause(m: Migration) -> dict[str, float] | None:
    """The final freeze and its parts, in ms; None until the container was restored.

    It lasts from the moment CRIU froze the tree on the source to the moment
    the restored tree resumed on the destination. Its parts: ``criu_freeze``
    (CRIU's own frozen time in the dump), ``delta`` (delta only: finding the
    changed blocks), ``wire`` (images over the data plane), ``fsync`` (a
    container with sync dirs: rsync's final pass, and stopping the
    destination's daemons), ``rebuild`` (delta only: the destination
    rebuilding the image set), ``restore`` (the criu restore call) and
    ``overhead`` (everything else: queues, task start, bookkeeping), and for
    post-copy ``first_faults`` (the restored tree waiting for its first pages
    before it got going: tasks.core.pauses.stalled). When the
    dump streamed its pages to the destination's page server, the wire
    overlaps the dump: CRIU's time writing pages (its ``memwrite``) moves
    from ``criu_freeze`` to ``wire``. When its pages image went out as CRIU
    wrote it (the transfer's ``tail``), what was left of it after the dump
    crossed during the transfer: ``wire`` holds it.
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
    dumps = [p.ms for p in m.pauses if p.phase == "dump"]
    first_faults = max(0.0, dumps[-1] - total) if dumps else 0.0
    return {
        "final_pause_ms": round(total + first_faults, 1),
        "criu_freeze_ms": round(criu, 1),
        "delta_ms": round(delta, 1),
        "wire_ms": round(wire, 1),
        "fsync_ms": round(fsync, 1),
        "rebuild_ms": round(rebuild, 1),
        "restore_ms": round(restore, 1),
        "overhead_ms": round(total - criu - delta - wire - fsync - rebuild - restore, 1),
        "first_faults_ms": round(first_faults, 1),
    }


def downtime(m: Migration) -> dict[str, Any] | None:
    """What the container felt, in ms; None while it never paused.

    ``downtime_ms`` is its longest pause (tasks.core.pauses: a pass's own
    freeze may be longer than the final one), ``paused_total_ms`` all of them
    and ``pauses`` how many; a lazy restore adds ``degraded_ms``, from the
    restore until the last page arrived, ``faults`` (pages the tree waited
    for) and ``fault_wait_ms`` (how long it waited in all); its longer waits
    are pauses (tasks.core.pauses.stalled). The final pause's parts follow
    (:func:`final_pause`).
    """
    parts = final_pause(m) or {}
    worst = longest(m.pauses)
    if worst is None and not parts:
        return None
    out: dict[str, Any] = {
        "downtime_ms": worst.ms if worst else parts["final_pause_ms"],
        "longest_pause": worst.phase if worst else "dump",
        "paused_total_ms": total_ms(m.pauses) if m.pauses else parts["final_pause_ms"],
        "pauses": len(m.pauses) or 1,
    }
    lazy = m.results.get("pages", {}).get("last_page_after_restore_ms")
    if lazy is not None:
        out["degraded_ms"] = lazy
    verify = m.results.get("verify", {})
    if "faults" in verify:
        out |= {"faults": verify["faults"], "fault_wait_ms": verify["fault_wait_ms"]}
    return {**out, **parts}


def sent(m: Migration) -> dict[str, int]:
    """Bytes over the wire, per part of the migration and in all.

    ``passes``: every pre-copy pass (delta: the changed blocks); ``final``: the
    final transfer (image files, the pages image sent as it was written, or the
    pages a cold dump streamed into the destination's CRIU); ``lazy``: post-copy's pages, which CRIU's own page
    server sends (as the destination's lazy-pages daemon counted them);
    ``sync``: rsync's passes over the declared directories.
    """
    r = m.results
    passes = sum(int(p.get("bytes_sent", 0)) for p in m.passes)
    xfer = r.get("transfer", {})
    final = (
        xfer.get("bytes", 0)
        + xfer.get("tail", {}).get("bytes", 0)
        + r.get("dump", {}).get("pages", {}).get("bytes", 0)
    )
    lazy = int(r.get("verify", {}).get("lazy_bytes") or 0)
    sync = sum(r.get(p, {}).get("bytes", 0) for p in ("sync", "final_sync"))
    return {
        "bytes_passes": passes,
        "bytes_final": final,
        "bytes_lazy": lazy,
        "sync_bytes": sync,
        "bytes": passes + final + lazy + sync,
    }


def summary(m: Migration) -> dict[str, Any]:
    """The one-line facts of a migration: state, the strategies that ran, its pauses,
    total time, bytes."""
    return {
        "id": m.id,
        "container": m.container,
        "src": m.src,
        "dst": m.dst,
        "state": m.state.value,
        "asked": m.asked or str(m.strategy),
        "strategy": m.path,
        "why": m.reason,
        "fallbacks": [f"{f.frm} -> {f.to}: {f.why}" for f in m.fallbacks],
        "total_s": round(m.updated - m.created, 3),
        **sent(m),
        **(downtime(m) or {}),
        "errors": [kept_logs(e) for e in m.errors] if m.state.final else list(m.errors),
    }


def one_line(m: Migration) -> str:
    s = summary(m)
    if m.state.value == "done":
        paused = f", {s['pauses']} pauses" if s.get("pauses", 1) > 1 else ""
        degraded = f", degraded {s['degraded_ms']:.0f} ms" if "degraded_ms" in s else ""
        return (
            f"{m.container} moved {m.src} -> {m.dst} ({s['strategy']}): downtime "
            f"{s.get('downtime_ms', 0):.0f} ms{paused}{degraded}, total {s['total_s']:.2f} s, "
            f"{size(s['bytes'])} sent"
        )
    why = kept_logs(m.errors[-1]) if m.errors else ""
    return f"{m.container} {m.state.value} ({m.src} -> {m.dst}): {why}"


# A CRIU log an error names: <node dir>/images|incoming/<mid>/<sub>/<name>.log
_LOG = re.compile(
    r"(?P<node>\S+)/(?:images|incoming)/(?P<mid>m-[0-9a-f]{12})/(?P<sub>[\w.-]+)/(?P<log>[\w.-]+\.log)"
)


def kept_logs(error: str) -> str:
    """``error`` with the CRIU logs it names where they are once the migration is over:
    the node's garbage collector drops the image dirs and keeps the logs as
    ``<node dir>/logs/<mid>/<sub>-<name>`` (tasks.node.phases.drop_images).

    >>> kept_logs("restore failed (see /var/lib/ferry/nodes/b/incoming/m-0123456789ab/final/restore.log)")
    'restore failed (see /var/lib/ferry/nodes/b/logs/m-0123456789ab/final-restore.log)'
    """
    return _LOG.sub(r"\g<node>/logs/\g<mid>/\g<sub>-\g<log>", error)


def size(n: float) -> str:
    """``n`` bytes in IEC units (KiB, MiB, GiB), as every ferry output prints them."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} GiB"


def event_line(ev: dict[str, str], tz: tzinfo | None = None) -> str:
    """One line of ``ferry watch``: when (the event's own time, ``tz`` or local),
    state, phase, what happened, the bytes its phase moved so far and the error if any.
    """
    when = datetime.fromtimestamp(float(ev.get("t") or 0), tz).strftime("%H:%M:%S.%f")[:-3]
    p = json.loads(ev.get("progress") or "{}")
    moved = ""
    if p.get("bytes_sent") is not None and p.get("phase") == ev.get("phase"):
        moved = size(p["bytes_sent"])
        if p.get("bytes_total"):
            moved += f" of {size(p['bytes_total'])}"
    parts = [when, f"{ev['state']:>12}", f"{ev['phase']:<9}", f"{ev['what']:<9}", moved]
    return " ".join(x for x in [*parts, ev.get("error", "")] if x).rstrip()
