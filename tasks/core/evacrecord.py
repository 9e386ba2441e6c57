"""Evacuation records, typed: what a drained node's containers became, and the JSON they are stored as.

Pure: :class:`Evacuation` holds the plan, the limits, each container's
:class:`MoveState` (pending, running, then one final :class:`Outcome`),
exclusions and strikes, and once over the report. :func:`to_dict` and
:func:`from_dict` carry it to and from the JSON record tasks.store.evacuations
keeps, through the one codec of every record (tasks.core.codec).
"""

from __future__ import annotations

import typing
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from tasks.core.codec import decode, encode
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
    return typing.cast(dict[str, Any], encode(ev))


def from_dict(d: Mapping[str, Any]) -> Evacuation:
    """The evacuation a stored JSON record holds (the inverse of :func:`to_dict`);
    CorruptRecord naming the field when it does not read. A record written before
    the codec (its moves keyed by container only, the plan's unplaceable as
    objects) is read as it is, so an evacuation running across an upgrade goes on."""
    where = f"evacuation record {d.get('id', '?') if isinstance(d, Mapping) else '?'}"
    if not isinstance(d, Mapping):
        raise CorruptRecord(f"{where}: want an object, not {type(d).__name__}")
    moves, plan = d.get("moves"), d.get("plan")
    if isinstance(moves, Mapping):
        d = {**d, "moves": {c: {"container": c, **mv} if isinstance(mv, Mapping) else mv
                            for c, mv in moves.items()}}  # fmt: skip
    if isinstance(plan, Mapping) and isinstance(plan.get("unplaceable"), list):
        old = [u for u in plan["unplaceable"] if isinstance(u, Mapping)]
        if old:
            d = {**d, "plan": {**plan, "unplaceable": [[u.get("container"), u.get("reason")]
                                                        for u in old]}}  # fmt: skip
    return decode(Evacuation, d, where)
