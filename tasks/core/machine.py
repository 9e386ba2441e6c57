"""The migration state machine: pure, plain data in, decision out.

The coordinator never blocks on a task. Each phase task reports an Event; the
pure ``next_step(migration, event)`` returns the updated record and what to
send next, to which node. The phases of each strategy::

    cold      PREPARE DUMP TRANSFER RESTORE VERIFY | CLEANUP
    postcopy  PREPARE DUMP(lazy) TRANSFER RESTORE(lazy) PAGES VERIFY | CLEANUP
    precopy,  PREPARE PRECOPY... DUMP TRANSFER RESTORE VERIFY | CLEANUP
    delta     (delta: each PRECOPY pass is followed by REBUILD on the destination)
    hybrid    PREPARE PRECOPY... DUMP(lazy) TRANSFER RESTORE(lazy) PAGES VERIFY | CLEANUP

A container that declared node-local directories (``sync``) gets two more:
SYNC after PREPARE (rsync's first pass, while it runs) and FINAL_SYNC after
TRANSFER (what changed, inside the freeze window); the others skip both.

``|`` is the point of no return: the destination has restored the container,
holds all its pages, and has verified it running. Before it, any failure (or
a cancel) rolls back: ABORT on the destination (kill a restored copy, drop
images), then RESUME the source (continue the frozen tree, or restore it from
its own images). After it the migration can no longer fail: the source copy
is removed, exactly once.

After each PRECOPY pass the stop rule (tasks.core.convergence) decides: another
pass, the final dump, or a fallback (post-copy, cold, or abort).

Every send carries a ``step`` number, unique within the migration; an event
for any step but the current one is stale (a redelivered or overtaken task)
and changes nothing.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Any

from tasks.core import convergence as conv
from tasks.core.options import Options
from tasks.core.strategy import Strategy


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
    SYNC = "sync"  # the declared directories' first rsync pass, while the container runs
    PRECOPY = "precopy"  # one pass: snapshot while running, send what changed
    REBUILD = "rebuild"  # delta: the destination rebuilds the pass's images
    DUMP = "dump"  # the final dump: the tree freezes
    TRANSFER = "transfer"
    FINAL_SYNC = "final_sync"  # rsync again, inside the freeze window: what changed
    RESTORE = "restore"
    PAGES = "pages"  # post-copy: wait until every page has reached the destination
    VERIFY = "verify"
    CLEANUP = "cleanup"
    ABORT = "abort"  # rollback: destination side
    RESUME = "resume"  # rollback: source side
    FINISHED = "finished"


# phase -> (runs on "src" or "dst", through the node's urgent queue)
ROUTE: dict[Phase, tuple[str, bool]] = {
    Phase.PREPARE: ("dst", False),
    Phase.SYNC: ("src", False),
    Phase.PRECOPY: ("src", False),
    Phase.REBUILD: ("dst", False),
    Phase.DUMP: ("src", True),
    Phase.TRANSFER: ("src", True),
    Phase.FINAL_SYNC: ("src", True),
    Phase.RESTORE: ("dst", True),
    Phase.PAGES: ("src", False),
    Phase.VERIFY: ("dst", True),
    Phase.CLEANUP: ("src", False),
    Phase.ABORT: ("dst", True),
    Phase.RESUME: ("src", True),
}
# Phases after which a copy may run on the destination: roll back dst first.
DST_MAY_RUN = {Phase.RESTORE, Phase.PAGES, Phase.VERIFY}
# Phases inside the container's freeze window (before the restore resumes it).
FREEZE = {Phase.DUMP, Phase.TRANSFER, Phase.FINAL_SYNC, Phase.RESTORE}


def phases(strategy: Strategy | str, lazy: bool, sync: bool = False) -> list[Phase]:
    """The forward phases of a strategy (without the repeated PRECOPY passes)."""
    strategy = Strategy.parse(strategy)
    out = [Phase.PREPARE]
    if sync:
        out.append(Phase.SYNC)
    if strategy.iterative:
        out.append(Phase.PRECOPY)
    out += [Phase.DUMP, Phase.TRANSFER]
    if sync:
        out.append(Phase.FINAL_SYNC)
    out.append(Phase.RESTORE)
    if lazy:
        out.append(Phase.PAGES)
    return out + [Phase.VERIFY, Phase.CLEANUP]


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
    strategy: Strategy = Strategy.COLD
    lazy: bool = False  # the final dump leaves pages on the source (post-copy)
    sync: tuple[str, ...] = ()  # the container's node-local directories, synced with rsync
    limits: conv.Limits = field(default_factory=conv.Limits)  # the stop rule's knobs
    options: Options = field(default_factory=Options)  # everything else asked at submit
    state: State = State.PENDING
    phase: Phase | None = None
    attempt: int = 0
    step: int = 0
    past_no_return: bool = False
    cancelled: bool = False  # a user (or an evacuation's deadline) asked for the rollback
    rollback: tuple[Phase, ...] = ()  # rollback steps still to finish
    passes: tuple[dict[str, Any], ...] = ()  # one convergence.IterationStats per pass
    # retry counters ("rollback stalled", "<phase> (rollback)"): never read back from errors
    retries: dict[str, int] = field(default_factory=dict)
    errors: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    reason: str = ""  # why this strategy
    mac: str = ""  # tasks.messaging.auth: the cluster secret vouches for id, container, nodes, strategy, sync
    created: float = 0.0
    updated: float = 0.0

    def __post_init__(self) -> None:
        if not isinstance(self.strategy, Strategy):  # a name, from a caller or a test
            object.__setattr__(self, "strategy", Strategy.parse(self.strategy))


@dataclass(frozen=True)
class Event:
    """What a phase task reports (or a user asks: ``start``, ``cancel``)."""

    kind: str  # start | done | failed | cancel | timeout | stalled
    now: float
    phase: Phase | None = None
    step: int = 0
    result: dict[str, Any] = field(default_factory=dict)
    error: str = ""
    transient: bool = False


@dataclass(frozen=True)
class Send:
    """Send phase task ``phase`` (step ``step``) to ``node``."""

    phase: Phase
    node: str
    urgent: bool
    step: int
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
        return _roll_back(replace(m, cancelled=True), "cancelled by request")
    if ev.kind == "timeout":
        return _timed_out(m, ev)
    if m.state.final or ev.phase is None:
        return m, []
    if m.state is State.ROLLING_BACK:
        if ev.kind == "stalled":
            # A rollback step was lost (its worker died, its node is away):
            # send what is left again, a bounded number of times.
            stalls = m.retries.get("rollback stalled", 0) + 1
            m = replace(
                m,
                step=m.step + 1,
                errors=(*m.errors, f"rollback stalled: {ev.error}"),
                retries={**m.retries, "rollback stalled": stalls},
            )
            if stalls > policy.rollback_attempts:
                return _rollback_failed(m, m.rollback[0])
            return m, [_send(m, p, m.step) for p in m.rollback]
        return _rollback_event(m, ev, policy)
    if ev.phase is not m.phase or ev.step != m.step:
        return m, []  # stale: a redelivered or overtaken task
    if ev.kind == "done":
        m = replace(m, results={**m.results, ev.phase.value: ev.result})
        return _advance(m, ev.phase, ev.result)
    if ev.kind == "failed":
        return _failed(m, ev, policy)
    if ev.kind == "stalled":
        # The step's worker died or its node vanished: try the phase again
        # (phases are idempotent), within the retry budget.
        return _failed(m, ev, policy)
    return m, []


def _timed_out(m: Migration, ev: Event) -> tuple[Migration, list[Send]]:
    """The whole migration ran past its time: abort, or force it to finish."""
    if m.state is not State.RUNNING or m.past_no_return:
        return m, []
    if m.options.timeout_action == "force" and m.phase in (Phase.PRECOPY, Phase.REBUILD):
        lazy = m.options.lazy_ok
        how = "post-copy" if lazy else "cold"
        m = replace(m, lazy=lazy, warnings=(*m.warnings, f"{ev.error}: forcing completion ({how})"))
        return _enter(m, Phase.DUMP)
    return _roll_back(m, ev.error or "timed out")


def _send(m: Migration, phase: Phase, step: int, countdown: float = 0.0) -> Send:
    side, urgent = ROUTE[phase]
    return Send(phase, m.src if side == "src" else m.dst, urgent, step, countdown)


def _enter(
    m: Migration, phase: Phase, attempt: int = 1, countdown: float = 0.0
) -> tuple[Migration, list[Send]]:
    m = replace(m, phase=phase, attempt=attempt, step=m.step + 1)
    return m, [_send(m, phase, m.step, countdown)]


def _advance(m: Migration, done: Phase, result: dict[str, Any]) -> tuple[Migration, list[Send]]:
    if done is Phase.VERIFY:
        # Point of no return: restored on the destination, every page there,
        # verified running. From here the migration cannot fail.
        m = replace(m, past_no_return=True)
    if done is Phase.CLEANUP:
        return replace(m, state=State.DONE, phase=Phase.FINISHED, attempt=0), []
    if done is Phase.PRECOPY:
        m = replace(m, passes=(*m.passes, result["pass"]))
        return _enter(m, Phase.REBUILD) if m.strategy is Strategy.DELTA else _after_pass(m)
    if done is Phase.REBUILD:
        return _after_pass(m)
    order = phases(m.strategy, m.lazy, bool(m.sync))
    return _enter(m, order[order.index(done) + 1])


def estimates(m: Migration) -> conv.Estimates:
    """What the stop rule needs, from the passes measured so far."""
    last = m.passes[-1]
    bandwidth = last["bytes_sent"] / last["seconds"] if last["seconds"] > 0 else float("inf")
    dump_ms = m.options.dump_ms or max(float(p["freeze_ms"]) for p in m.passes)
    return conv.Estimates(
        dump_ms=dump_ms,
        restore_ms=dump_ms if m.options.restore_ms is None else m.options.restore_ms,
        bandwidth_bps=bandwidth,
    )


def _after_pass(m: Migration) -> tuple[Migration, list[Send]]:
    history = [conv.IterationStats(**p) for p in m.passes]
    limits = m.limits
    if len(history) == 1 and limits.max_iterations > 1:
        # The first pass copies everything; only the second measures how fast
        # the workload dirties its memory, which every stop rule needs.
        decision: conv.Decision = conv.Continue(
            "first pass: the dirty rate is not measured yet", float("inf")
        )
    else:
        decision = conv.decide(history, limits, estimates(m))
    m = replace(
        m,
        results={
            **m.results,
            "decision": {
                "rule": decision.rule,
                "reason": decision.reason,
                "expected_downtime_ms": decision.expected_downtime_ms,
            },
        },
    )
    if isinstance(decision, conv.Continue):
        return _enter(m, Phase.PRECOPY)
    if isinstance(decision, conv.FallBack):
        m = replace(m, warnings=(*m.warnings, f"falling back to {decision.to}: {decision.reason}"))
        if decision.to == "abort":
            return _roll_back(m, f"did not converge: {decision.reason}")
        m = replace(m, lazy=decision.to == "postcopy")
    return _enter(m, Phase.DUMP)


def backoff(m: Migration, attempt: int, policy: Policy) -> float:
    """Exponential backoff with a deterministic jitter of up to 20 %."""
    base = min(policy.backoff_max_s, policy.backoff_s * 2.0 ** (attempt - 1))
    jitter = zlib.crc32(f"{m.id}/{m.phase}/{attempt}".encode()) % 1000 / 1000
    return float(round(base * (1 + 0.2 * jitter), 3))


def _failed(m: Migration, ev: Event, policy: Policy) -> tuple[Migration, list[Send]]:
    assert ev.phase is not None
    m = replace(m, errors=(*m.errors, f"{ev.phase.value} (attempt {m.attempt}): {ev.error}"))
    # Inside the freeze window a flaky link is not worth keeping the container
    # frozen for (the data plane already retried): roll back and resume it.
    # A lost step (its worker died) is sent again, wherever it was.
    retry = ev.kind == "stalled" or (ev.transient and ev.phase not in FREEZE)
    if retry and m.attempt < policy.max_attempts:
        return _enter(m, ev.phase, m.attempt + 1, backoff(m, m.attempt + 1, policy))
    if m.past_no_return:
        # Only CLEANUP runs here. The container runs on the destination; the
        # source copy stays frozen, and the record says so.
        if m.attempt < policy.rollback_attempts:
            return _enter(m, ev.phase, m.attempt + 1, backoff(m, m.attempt + 1, policy))
        return replace(
            m,
            state=State.DONE,
            phase=Phase.FINISHED,
            errors=(*m.errors, f"source copy left frozen on {m.src}"),
        ), []
    return _roll_back(m, f"{ev.phase.value} failed")


def _roll_back(m: Migration, why: str) -> tuple[Migration, list[Send]]:
    m = replace(
        m,
        state=State.ROLLING_BACK,
        errors=(*m.errors, f"rolling back: {why}"),
        rollback=(Phase.ABORT, Phase.RESUME),
    )
    if m.phase in DST_MAY_RUN:
        # A copy may run on the destination: stop it before the source resumes.
        return _enter(m, Phase.ABORT)
    m = replace(m, phase=Phase.RESUME, attempt=1, step=m.step + 1)
    return m, [_send(m, Phase.RESUME, m.step), _send(m, Phase.ABORT, m.step)]


def _rollback_failed(m: Migration, phase: Phase) -> tuple[Migration, list[Send]]:
    where = (
        f"the source copy on {m.src} could not be resumed"
        if phase is Phase.RESUME
        else f"a copy may remain on {m.dst}; the source stays frozen on {m.src}"
    )
    return replace(
        m,
        state=State.FAILED,
        phase=Phase.FINISHED,
        rollback=(),
        errors=(*m.errors, f"rollback failed: {where}"),
    ), []


def _rollback_event(m: Migration, ev: Event, policy: Policy) -> tuple[Migration, list[Send]]:
    assert ev.phase is not None
    if ev.phase not in m.rollback:
        return m, []
    sequential = m.phase is Phase.ABORT  # abort must finish before resume is sent
    if ev.kind == "failed":
        key = f"{ev.phase.value} (rollback)"
        tries = m.retries.get(key, 0) + 1
        m = replace(
            m,
            errors=(*m.errors, f"{key} {tries}: {ev.error}"),
            retries={**m.retries, key: tries},
        )
        if tries < policy.rollback_attempts:
            m = replace(m, step=m.step + 1)
            return m, [_send(m, ev.phase, m.step, backoff(m, tries + 1, policy))]
        return _rollback_failed(m, ev.phase)
    if ev.kind != "done":
        return m, []
    left = tuple(p for p in m.rollback if p is not ev.phase)
    m = replace(m, rollback=left, results={**m.results, ev.phase.value: ev.result})
    if not left or (ev.phase is Phase.RESUME and not sequential):
        # The source runs again. A destination that never restored holds no
        # copy: its ABORT only tidies images, whenever it gets there.
        return replace(m, state=State.ROLLED_BACK, phase=Phase.FINISHED, attempt=0), []
    if sequential and ev.phase is Phase.ABORT:
        return _enter(m, Phase.RESUME)
    return m, []
