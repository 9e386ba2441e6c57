"""Evacuation inputs and outputs: registry records to planner inputs, a finished record to a report.

Pure: node records as tasks.store.migrations keeps them (probe, containers, cordon,
``alive``) in, :mod:`tasks.core.planner` inputs out; an evacuation record in, its
report out. No Redis, no Celery, no clock.

A node's free memory is its probed free memory (measured when its worker
started, before it ran any container) minus the memory of the containers it
runs now: conservative when a worker restarts under running containers. A
node that never probed its memory (the ``sim`` runtime) counts as 1 TiB.
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Mapping
from typing import Any

from tasks.core.bound import Leg, lower_bound
from tasks.core.chooser import pair_refusal, strategy_refusal
from tasks.core.nodes import NodeRecord
from tasks.core.planner import Compatible, ContainerSpec, Node, Plan
from workers.errors import BadRequest
from workers.records import ContainerInfo

OUTCOMES = ("moved", "rolled_back", "failed", "not_placed", "not_started", "gone")
PENDING, RUNNING = "pending", "running"  # a move's outcome before one of OUTCOMES
UNKNOWN_MEMORY = 1 << 40  # what NodeRecord.caps assumes for a node that did not probe
RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?)(bit|b)?(?:/s)?\s*$", re.IGNORECASE)
POWERS = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4}


class Unplaceable(BadRequest):
    """Some containers have no destination: nothing was moved. ``preview`` is the plan."""

    def __init__(self, preview: dict[str, Any]) -> None:
        names = ", ".join(u["container"] for u in preview["unplaceable"])
        super().__init__(
            f"nothing moved: no destination for {names} (see the plan); "
            "--allow-partial moves the others"
        )
        self.preview = preview


def parse_rate(rate: str | float | None) -> float | None:
    """Bytes per second from ``50M`` (MB/s), ``64Mi`` (MiB/s), ``800mbit`` or a number.

    None stays None (no cap).
    """
    if rate is None:
        return None
    if isinstance(rate, (int, float)) and not isinstance(rate, bool):
        value = float(rate)
    else:
        m = RATE.match(str(rate))
        if not m:
            raise BadRequest(f"bad rate {rate!r}: use bytes/s like 50M, 64Mi or 800mbit")
        num, prefix, binary, unit = m.groups()
        value = float(num) * (1024 if binary else 1000) ** POWERS[prefix.lower()]
        if (unit or "").lower() == "bit":
            value /= 8
    if not value > 0 or math.isinf(value):  # NaN is not > 0
        raise BadRequest(f"rate must be > 0 and finite, not {rate!r}")
    return value


def live(rec: NodeRecord) -> list[ContainerInfo]:
    """The containers of a node record that have not exited."""
    return [c for c in rec.containers if c.state != "exited"]


def node_of(rec: NodeRecord) -> Node:
    """A registry record as the planner sees it (its inventory, or the usage it published)."""
    p, load = rec.probe, rec.taken
    return Node(
        rec.name,
        str(p.get("arch", "?")),
        int(p.get("mem_total_bytes", UNKNOWN_MEMORY)),
        int(p.get("mem_free_bytes", UNKNOWN_MEMORY)) - load.memory_bytes,
        cordoned=rec.cordoned,
        containers=load.containers,
        groups=frozenset(load.groups),
    )


def specs_of(rec: NodeRecord) -> list[ContainerSpec]:
    """The containers to move off a node record."""
    return [ContainerSpec(c.name, c.memory_bytes, dict(c.labels)) for c in live(rec)]


def compatible(
    records: Mapping[str, NodeRecord], to: Collection[str] | None, strategy: str
) -> Compatible:
    """Why a destination cannot take the drained node's containers (planner's ``compatible``)."""

    def why(drain: Node, dst: Node) -> str | None:
        rec = records[dst.name]
        if to is not None and dst.name not in to:
            return "is not in --to"
        if not rec.alive:
            return "is not answering"
        src_caps, dst_caps = records[drain.name].caps, rec.caps
        refusal = pair_refusal(src_caps, dst_caps)
        if refusal is None and strategy != "auto":
            refusal = strategy_refusal(strategy, src_caps, dst_caps)
        return f"cannot take them: {refusal}" if refusal else None

    return why


def plan_to_json(p: Plan) -> dict[str, Any]:
    d = p.drain
    return {
        "drain": {
            "name": d.name,
            "arch": d.arch,
            "mem_total_bytes": d.mem_total_bytes,
            "mem_free_bytes": d.mem_free_bytes,
        },
        "moves": [
            {
                "container": m.container,
                "src": m.src,
                "dst": m.dst,
                "order": m.order,
                "memory_bytes": m.memory_bytes,
                "group": m.group,
                "priority": m.priority,
            }
            for m in p.moves
        ],
        "unplaceable": [{"container": c, "reason": why} for c, why in p.unplaceable],
        "headroom": p.headroom,
    }


def bound_s(plan: Plan, link_bps: float, measured: Mapping[tuple[str, str], float]) -> float:
    """The plan's makespan lower bound before anything moved: no freeze known yet."""
    legs = [Leg(m.container, m.src, m.dst, m.memory_bytes) for m in plan.moves]
    return lower_bound(legs, measured, link_bps).seconds


def legs_of(rec: Mapping[str, Any]) -> list[Leg]:
    """The moves of an evacuation record that moved, with the freezes their migrations measured.

    A lazy restore (post-copy: ``degraded_ms``) ran before its pages crossed: it counts 0.
    """
    out = []
    for name, mv in rec["moves"].items():
        if mv["outcome"] != "moved":
            continue
        s = mv.get("summary") or {}
        restore = 0.0 if "degraded_ms" in s else float(s.get("restore_ms", 0.0))
        dump = float(s.get("criu_freeze_ms", 0.0))
        out.append(
            Leg(name, rec["node"], mv["dst"], int(mv["memory_bytes"]), dump / 1e3, restore / 1e3)
        )
    return out


def report(
    rec: Mapping[str, Any], measured: Mapping[tuple[str, str], float] | None = None
) -> dict[str, Any]:
    """The report of a finished evacuation record: one row per container, totals, one message.

    Its lower bound (tasks.core.bound) is over what moved, at the ``measured`` link rates
    (bytes/s by (src, dst)) where they beat the rate the plan assumed (``link_bps``).
    """
    rows = []
    for name, mv in sorted(rec["moves"].items(), key=lambda kv: (kv[1]["order"], kv[0])):
        s = mv.get("summary") or {}
        rows.append(
            {
                "container": name,
                "src": rec["node"],
                "dst": mv["dst"],
                "outcome": mv["outcome"],
                "migration": mv.get("migration"),
                "strategy": s.get("strategy"),
                "downtime_ms": s.get("downtime_ms"),
                "total_s": s.get("total_s"),
                "bytes": s.get("bytes", 0),
                "error": mv.get("error", ""),
            }
        )
    counts = {o: sum(1 for r in rows if r["outcome"] == o) for o in OUTCOMES}
    makespan = round(float(rec["finished"]) - float(rec["started"]), 3)
    b = lower_bound(legs_of(rec), measured or {}, float(rec["link_bps"]))
    bound = round(b.seconds, 3)
    # a failed migration whose rollback failed may have left a copy elsewhere: its record says
    left = [
        r["container"]
        for r in rows
        if r["outcome"] not in ("moved", "failed", "gone")
        or (r["outcome"] == "failed" and r["migration"] is None)
    ]
    return {
        "id": rec["id"],
        "node": rec["node"],
        "state": rec["state"],
        "containers": rows,
        "counts": counts,
        "makespan_s": makespan,
        "lower_bound_s": bound,
        "ratio": round(makespan / bound, 3) if bound > 0 else None,
        "bound_by": b.by,  # the link or move that sets the bound
        "link_bps": b.rates.get(f"up {rec['node']}", rec["link_bps"]),  # the drained node's uplink
        "left_on_source": left,
        "cordoned": True,
        "excluded": rec.get("excluded", {}),
        "message": _message(rec, rows, counts, left, makespan, bound),
    }


def _message(
    rec: Mapping[str, Any],
    rows: list[dict[str, Any]],
    counts: Mapping[str, int],
    left: list[str],
    makespan: float,
    bound: float,
) -> str:
    node, n = rec["node"], len(rows)
    head = f"{counts['moved']} of {n} containers moved off {node} in {makespan:.1f} s"
    if bound > 0:
        head += f" (lower bound {bound:.1f} s)"
    if rec["state"] in ("cancelled", "timed_out"):
        head += f"; {rec['state'].replace('_', ' ')}"
    parts = [head]
    if left:
        parts.append(f"still running on {node}: {', '.join(left)}")
    for r in rows:
        if r["outcome"] == "failed" and r["migration"]:
            parts.append(
                f"{r['container']} failed to roll back: see `ferry status {r['migration']}`"
            )
    for o in OUTCOMES[1:]:
        if counts[o]:
            parts.append(
                f"{o.replace('_', ' ')}: "
                f"{', '.join(r['container'] for r in rows if r['outcome'] == o)}"
            )
    for dst, why in rec.get("excluded", {}).items():
        parts.append(f"no more moves to {dst}: {why}")
    tail = "fix, then evacuate again" if left else f"`ferry uncordon {node}` once it is back"
    return "; ".join(parts) + f"; {node} stays cordoned: {tail}"
