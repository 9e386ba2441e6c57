"""The migration state machine: pure, plain data in, decision out.

The coordinator never blocks on a task. Each phase task reports an Event; the
pure ``next_step(migration, event)`` returns the updated record and what to
send next, to which node. Cold migration::

    PREPARE(dst) -> DUMP(src, urgent) -> TRANSFER(src, urgent)
      -> RESTORE(dst, urgent) -> VERIFY(dst, urgent) == point of no return ==
      -> CLEANUP(src) -> DONE

Before the point of no return any failure (or a cancel) rolls back: ABORT on
the destination (kill a restored copy, drop images), then RESUME the source
(continue the frozen tree, or restore it from its own images). Once the
destination has restored *and verified* the container, the migration can no
longer fail: the source copy is removed, exactly once.

Every event names the phase and attempt it answers; an event for any other
phase or attempt is stale (a redelivered or overtaken task) and changes
nothing.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Any


class State(str, Enum):
    PENDING = "pending"
    RUNNING = "running"
    ROLLING_BACK = "rolling_back"
    DONE = "done"
    ROLLED_BACK = "rolled_back"
    FAILED = "failed"  # rollback itself failed: the record says where the container is

    @property
    def final(self) -> bool:
        return self in (State.DONE, State.ROLLED_BACK, State.FAILED)


class Phase(str, Enum):
    PREPARE = "prepare"
    DUMP = "dump"
    TRANSFER = "transfer"
    RESTORE = "restore"
    VERIFY = "verify"
    CLEANUP = "cleanup"
    ABORT = "abort"  # rollback: destination side
    RESUME = "resume"  # rollback: source side
    FINISHED = "finished"


# (phase, runs on "src" or "dst", through the node's urgent queue)
ROUTE: dict[Phase, tuple[str, bool]] = {
    Phase.PREPARE: ("dst", False),
    Phase.DUMP: ("src", True),
    Phase.TRANSFER: ("src", True),
    Phase.RESTORE: ("dst", True),
    Phase.VERIFY: ("dst", True),
    Phase.CLEANUP: ("src", False),
    Phase.ABORT: ("dst", True),
    Phase.RESUME: ("src", True),
}
FORWARD = [Phase.PREPARE, Phase.DUMP, Phase.TRANSFER, Phase.RESTORE, Phase.VERIFY, Phase.CLEANUP]
# Phases after which a copy may exist on the destination: roll back dst first.
DST_MAY_RUN = {Phase.RESTORE, Phase.VERIFY}


@dataclass(frozen=True)
class Policy:
    """Retry budgets: how often a phase is tried, and the backoff between tries."""

    max_attempts: int = 3
    rollback_attempts: int = 8
    backoff_s: float = 0.5
    backoff_max_s: float = 30.0


@dataclass(frozen=True)
class Migration:
    """The migration record, as the state machine sees it."""

    id: str
    container: str
    src: str
    dst: str
    strategy: str = "cold"
    state: State = State.PENDING
    phase: Phase | None = None
    attempt: int = 0
    past_no_return: bool = False
    rollback: tuple[Phase, ...] = ()  # rollback steps still to finish
    errors: tuple[str, ...] = ()
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    created: float = 0.0
    updated: float = 0.0


@dataclass(frozen=True)
class Event:
    """What a phase task reports (or a user asks: ``start``, ``cancel``)."""

    kind: str  # start | done | failed | cancel
    now: float
    phase: Phase | None = None
    attempt: int = 0
    result: dict[str, Any] = field(default_factory=dict)
    error: str = ""
    transient: bool = False


@dataclass(frozen=True)
class Send:
    """Send phase task ``phase`` for attempt ``attempt`` to ``node``."""

    phase: Phase
    node: str
    urgent: bool
    attempt: int
    countdown: float = 0.0


def next_step(m: Migration, ev: Event, policy: Policy = Policy()) -> tuple[Migration, list[Send]]:
    """Apply ``ev`` to ``m``: the new record and the tasks to send."""
    m = replace(m, updated=ev.now)
    if ev.kind == "start":
        if m.state is not State.PENDING:
            return m, []
        return _enter(replace(m, state=State.RUNNING), Phase.PREPARE)
    if ev.kind == "cancel":
        if m.state is not State.RUNNING or m.past_no_return:
            return m, []
        return _roll_back(m, "cancelled by request")
    if m.state.final or ev.phase is None:
        return m, []
    if m.state is State.ROLLING_BACK:
        return _rollback_event(m, ev, policy)
    if ev.phase is not m.phase or ev.attempt != m.attempt:
        return m, []  # stale: a redelivered or overtaken task
    if ev.kind == "done":
        return _advance(replace(m, results={**m.results, ev.phase.value: ev.result}), ev.phase)
    if ev.kind == "failed":
        return _failed(m, ev, policy)
    return m, []


def _enter(m: Migration, phase: Phase, attempt: int = 1, countdown: float = 0.0) -> tuple[Migration, list[Send]]:
    side, urgent = ROUTE[phase]
    node = m.src if side == "src" else m.dst
    return replace(m, phase=phase, attempt=attempt), [Send(phase, node, urgent, attempt, countdown)]


def _advance(m: Migration, done: Phase) -> tuple[Migration, list[Send]]:
    if done is Phase.VERIFY:
        # Point of no return: restored on the destination and verified running.
        m = replace(m, past_no_return=True)
    if done is Phase.CLEANUP:
        return replace(m, state=State.DONE, phase=Phase.FINISHED, attempt=0), []
    return _enter(m, FORWARD[FORWARD.index(done) + 1])


def backoff(m: Migration, attempt: int, policy: Policy) -> float:
    """Exponential backoff with a deterministic jitter of up to 20 %."""
    base = min(policy.backoff_max_s, policy.backoff_s * 2 ** (attempt - 1))
    jitter = zlib.crc32(f"{m.id}/{m.phase}/{attempt}".encode()) % 1000 / 1000
    return round(base * (1 + 0.2 * jitter), 3)


def _failed(m: Migration, ev: Event, policy: Policy) -> tuple[Migration, list[Send]]:
    assert ev.phase is not None
    m = replace(m, errors=(*m.errors, f"{ev.phase.value} (attempt {ev.attempt}): {ev.error}"))
    if ev.transient and ev.attempt < policy.max_attempts:
        return _enter(m, ev.phase, ev.attempt + 1, backoff(m, ev.attempt + 1, policy))
    if m.past_no_return:
        # Only CLEANUP runs here. The container runs on the destination; the
        # source copy stays frozen, and the record says so.
        if ev.attempt < policy.rollback_attempts:
            return _enter(m, ev.phase, ev.attempt + 1, backoff(m, ev.attempt + 1, policy))
        return replace(m, state=State.DONE, phase=Phase.FINISHED,
                       errors=(*m.errors, f"source copy left frozen on {m.src}")), []
    return _roll_back(m, f"{ev.phase.value} failed")


def _roll_back(m: Migration, why: str) -> tuple[Migration, list[Send]]:
    m = replace(m, state=State.ROLLING_BACK, errors=(*m.errors, f"rolling back: {why}"))
    if m.phase in DST_MAY_RUN:
        # A copy may run on the destination: stop it before the source resumes.
        m = replace(m, rollback=(Phase.ABORT, Phase.RESUME))
        return _enter(m, Phase.ABORT)
    m = replace(m, rollback=(Phase.ABORT, Phase.RESUME), phase=Phase.RESUME, attempt=1)
    return m, [Send(Phase.RESUME, m.src, True, 1), Send(Phase.ABORT, m.dst, True, 1)]


def _rollback_event(m: Migration, ev: Event, policy: Policy) -> tuple[Migration, list[Send]]:
    assert ev.phase is not None
    if ev.phase not in m.rollback:
        return m, []
    sequential = m.phase is Phase.ABORT  # abort must finish before resume is sent
    if ev.kind == "failed":
        m = replace(m, errors=(*m.errors, f"{ev.phase.value} (attempt {ev.attempt}): {ev.error}"))
        if ev.attempt < policy.rollback_attempts:
            side, urgent = ROUTE[ev.phase]
            node = m.src if side == "src" else m.dst
            wait = backoff(m, ev.attempt + 1, policy)
            if sequential:
                m = replace(m, attempt=ev.attempt + 1)
            return m, [Send(ev.phase, node, urgent, ev.attempt + 1, wait)]
        where = (f"the source copy on {m.src} could not be resumed" if ev.phase is Phase.RESUME
                 else f"a copy may remain on {m.dst}")
        return replace(m, state=State.FAILED, phase=Phase.FINISHED, rollback=(),
                       errors=(*m.errors, f"rollback failed: {where}")), []
    if ev.kind != "done":
        return m, []
    left = tuple(p for p in m.rollback if p is not ev.phase)
    m = replace(m, rollback=left, results={**m.results, ev.phase.value: ev.result})
    if not left:
        return replace(m, state=State.ROLLED_BACK, phase=Phase.FINISHED, attempt=0), []
    if sequential and ev.phase is Phase.ABORT:
        return _enter(m, Phase.RESUME)
    return m, []
