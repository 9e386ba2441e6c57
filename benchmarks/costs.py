"""Where a migration's time goes beyond its bytes and its freeze: its fixed costs, by part.

Read from the records a run left (its migration record, its event stream and
the evacuation that drove it), for benchmarks/scale.py. Per migration, in ms:

- ``fixed``: the whole migration (created to final) less its final freeze
  and less each pre-copy pass's own work (its send and its snapshot's
  freeze): what the target of <= 100 ms is about;
- ``control hop``: submitted to its start (the ``ferry.control`` queue; an
  evacuation's tick starts what it submits itself, in the coordinator);
- ``queue hops``: each phase's task sent (the record entered the phase) to
  its handler starting on the node, summed (a pass's: its interval less its work);
- ``prepare``, ``verify``, ``cleanup``: those handlers' own time;
- ``record writes``: the record's transactions (its event stream's length);
- ``noticed``: the migration final to its evacuation's tick taking it in
  (what holds the next move of its slot back).
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping
from typing import Any

from tasks.core.migration import Migration
from tasks.core.summary import final_pause

PARTS = ("fixed", "control hop", "queue hops", "prepare", "verify", "cleanup", "noticed")


def entered(events: list[tuple[str, Mapping[str, str]]]) -> list[tuple[float, str]]:
    """(when, phase) each time the record entered a phase: its start, then every phase done."""
    out = []
    for _, f in events:
        if f.get("what") in ("start", "done") and f.get("phase"):
            out.append((float(f["t"]), f["phase"]))
    return out


def parts(
    m: Migration, events: list[tuple[str, Mapping[str, str]]], noticed: float | None
) -> dict[str, float]:
    """One migration's fixed costs in ms (see the module docstring)."""
    steps = entered(events)
    ends = [t for t, _ in steps[1:]] + [m.updated]
    work = {p: 0.0 for p in ("prepare", "verify", "cleanup")}
    hops = passes = 0.0
    k = 0
    for (t, phase), end in zip(steps, ends, strict=True):
        r = m.results.get(phase, {})
        if phase == "precopy":
            p = m.passes[k] if k < len(m.passes) else {}
            k += 1
            own = float(p.get("seconds", 0.0)) + float(p.get("freeze_ms", 0.0)) / 1000
            passes += own
            hops += max(end - t - own, 0.0)
        elif "started" in r:
            hops += max(float(r["started"]) - t, 0.0)
            if phase in work:
                work[phase] = end - float(r["started"])
    pause = (final_pause(m) or {}).get("final_pause_ms", 0.0) / 1000
    control = steps[0][0] - m.created if steps else 0.0
    out = {
        "fixed": m.updated - m.created - pause - passes,
        "control hop": control,
        "queue hops": hops,
        **work,
        "noticed": noticed if noticed is not None else float("nan"),
    }
    return {k: round(v * 1000, 1) for k, v in out.items()} | {"record writes": len(events)}


def medians(rows: list[dict[str, float]]) -> dict[str, float | None]:
    """The median of each part over the migrations (NaN: not known for that one)."""
    out: dict[str, float | None] = {}
    for key in (*PARTS, "record writes"):
        vals = [r[key] for r in rows if r.get(key) == r.get(key)]  # NaN != NaN
        out[key] = round(statistics.median(vals), 1) if vals else None
    return out


def of_run(client: Any, evacuations: list[Mapping[str, Any]]) -> dict[str, float | None]:
    """The medians over every migration the ``evacuations`` (their records) moved."""
    rows = []
    for rec in evacuations:
        for mv in rec["moves"].values():
            if mv["outcome"] != "moved" or not mv.get("migration"):
                continue
            m = client.status(mv["migration"])
            events = client.store.events(m.id)
            noticed = float(mv["finished"]) - m.updated if mv.get("finished") else None
            rows.append(parts(m, events, noticed))
    return medians(rows)
