"""Evacuation records, typed: what a drained node's containers became, and the JSON they are stored as.

Pure: :class:`Evacuation` holds the plan, the limits, each container's
:class:`MoveState` (pending, running, then one final :class:`Outcome`),
exclusions and strikes, and once over the report. :func:`to_dict` and
:func:`from_dict` are the one serializer between it and the JSON record
tasks.store.evacuations keeps; the keys are the runner's since its first
release, so evacuations running across an upgrade go on.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any

from tasks.core.evacplan import plan_from_json, plan_to_json
from tasks.core.planner import Plan, PlanLimits
from workers.errors import CorruptRecord


class Outcome(str, Enum):
    """A move's outcome: PENDING, then RUNNING, then one of the final ones for good."""

    PENDING = "pending"
    RUNNING = "running"
    MOVED = "moved"
    ROLLED_BACK = "rolled_back"
    FAILED = "failed"
    NOT_PLACED = "not_placed"
    NOT_STARTED = "not_started"
    GONE = "gone"

    @property
    def final(self) -> bool:
        return self not in (Outcome.PENDING, Outcome.RUNNING)


class Stop(str, Enum):
    """Why an evacuation stopped starting moves before every container had one."""

    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"


class EvacState(str, Enum):
    """An evacuation's state: running, then done, or stopped for good."""

    RUNNING = "running"
    DONE = "done"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"


@dataclass(frozen=True)
class MoveState:
    """One container of the drained node: where it goes and how that went."""

    container: str
    dst: str | None  # None once it has no place
    order: int
    memory_bytes: int
    outcome: Outcome = Outcome.PENDING
    migration: str | None = None
    error: str = ""
    started: float | None = None
    finished: float | None = None
    summary: dict[str, Any] | None = None  # tasks.core.summary of its migration, once it ended


@dataclass(frozen=True)
class Evacuation:
    """The evacuation record, as the runner decides on it."""

    id: str
    node: str
    to: tuple[str, ...] | None  # --to, sorted; None: any node
    strategy: str
    bandwidth_bps: float | None
    limits: PlanLimits
    link_bps: float
    plan: Plan
    moves: dict[str, MoveState]
    started: float
    state: EvacState = EvacState.RUNNING
    stop: Stop | None = None
    deadline: float | None = None
    excluded: dict[str, str] = field(default_factory=dict)  # destination -> why no more moves
    strikes: dict[str, int] = field(default_factory=dict)  # failures blamed on a destination
    preview: dict[str, Any] = field(default_factory=dict)  # the plan as shown at the start
    finished: float | None = None
    report: dict[str, Any] | None = None


_OPTIONAL = ("started", "finished", "summary")  # stored only once set, as they always were


def begin(
    eid: str,
    node: str,
    plan: Plan,
    *,
    link_bps: float,
    now: float,
    to: Collection[str] | None = None,
    strategy: str = "auto",
    bandwidth_bps: float | None = None,
    limits: PlanLimits | None = None,
    deadline: float | None = None,
    sizes: Mapping[str, int] | None = None,
    preview: dict[str, Any] | None = None,
) -> Evacuation:
    """A new evacuation of ``node`` by ``plan``: its moves pending, the unplaceable not placed.

    ``sizes``: the memory of the drained node's containers, for the unplaceable ones.
    """
    moves = {
        m.container: MoveState(m.container, m.dst, m.order, m.memory_bytes) for m in plan.moves
    }
    for i, (c, why) in enumerate(plan.unplaceable):
        size = (sizes or {}).get(c, 0)
        moves[c] = MoveState(c, None, len(plan.moves) + i, size, Outcome.NOT_PLACED, error=why)
    return Evacuation(
        id=eid,
        node=node,
        to=tuple(sorted(to)) if to else None,
        strategy=strategy,
        bandwidth_bps=bandwidth_bps,
        limits=limits or PlanLimits(),
        link_bps=link_bps,
        plan=plan,
        moves=moves,
        started=now,
        deadline=deadline,
        preview=preview or {},
    )


def to_dict(ev: Evacuation) -> dict[str, Any]:
    """The stored JSON record of ``ev`` (tasks.store.evacuations keeps it)."""
    moves = {}
    for name, mv in ev.moves.items():
        d = {k: v for k, v in asdict(mv).items() if k != "container"}
        d["outcome"] = mv.outcome.value
        moves[name] = {k: v for k, v in d.items() if k not in _OPTIONAL or v is not None}
    return {
        "id": ev.id,
        "node": ev.node,
        "to": None if ev.to is None else list(ev.to),
        "strategy": ev.strategy,
        "bandwidth_bps": ev.bandwidth_bps,
        "limits": asdict(ev.limits),
        "link_bps": ev.link_bps,
        "state": ev.state.value,
        "stop": None if ev.stop is None else ev.stop.value,
        "deadline": ev.deadline,
        "plan": plan_to_json(ev.plan),
        "excluded": dict(ev.excluded),
        "strikes": dict(ev.strikes),
        "moves": moves,
        "preview": ev.preview,
        "started": ev.started,
        "finished": ev.finished,
        "report": ev.report,
    }


def from_dict(d: Mapping[str, Any]) -> Evacuation:
    """The evacuation a stored JSON record holds (the inverse of :func:`to_dict`)."""
    try:
        return _from_dict(d)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CorruptRecord(
            f"evacuation record {d.get('id', '?') if isinstance(d, Mapping) else '?'} does not "
            f"parse ({type(exc).__name__}: {exc})"
        ) from exc


def _from_dict(d: Mapping[str, Any]) -> Evacuation:
    moves = {
        name: MoveState(
            name,
            mv["dst"],
            int(mv["order"]),
            int(mv["memory_bytes"]),
            Outcome(mv["outcome"]),
            mv.get("migration"),
            mv.get("error", ""),
            mv.get("started"),
            mv.get("finished"),
            mv.get("summary"),
        )
        for name, mv in d["moves"].items()
    }
    return Evacuation(
        id=d["id"],
        node=d["node"],
        to=None if d["to"] is None else tuple(d["to"]),
        strategy=d["strategy"],
        bandwidth_bps=d["bandwidth_bps"],
        limits=PlanLimits(**d["limits"]),
        link_bps=d["link_bps"],
        plan=plan_from_json(d["plan"]),
        moves=moves,
        started=d["started"],
        state=EvacState(d["state"]),
        stop=None if d["stop"] is None else Stop(d["stop"]),
        deadline=d["deadline"],
        excluded=dict(d.get("excluded", {})),
        strikes=dict(d.get("strikes", {})),
        preview=d.get("preview", {}),
        finished=d.get("finished"),
        report=d.get("report"),
    )
