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
from dataclasses import replace
from typing import Any

from tasks.core import convergence as conv
from tasks.core.migration import (
    DEFAULT_POLICY,
    DST_MAY_RUN,
    FREEZE,
    ROUTE,
    Event,
    Fallback,
    Migration,
    Phase,
    Policy,
    Send,
    State,
    phases,
)
from tasks.core.pauses import Pause, stalled
from tasks.core.strategy import Strategy


def next_step(
    m: Migration, ev: Event, policy: Policy = DEFAULT_POLICY
) -> tuple[Migration, list[Send]]:
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
        m = replace(m, past_no_return=True, pauses=stalled(m.pauses, result.get("stalls", ())))
    if done is Phase.CLEANUP:
        return replace(m, state=State.DONE, phase=Phase.FINISHED, attempt=0), []
    if done is Phase.RESTORE:  # frozen from the final dump until the restore resumed it
        m = _frozen_until(m, "dump", result.get("end"))
    if done is Phase.PRECOPY:
        freeze = result.get("pause")  # the pass's own freeze of the tree
        if freeze:
            m = _paused(m, "precopy", freeze["start"], freeze["ms"])
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
        to, why = decision.to, decision.reason
        if to == "postcopy" and not m.options.lazy_ok:
            to, why = "cold", f"{why} (postcopy is not possible between these nodes)"
        m = replace(
            m,
            warnings=(*m.warnings, f"falling back to {to}: {why}"),
            fallbacks=(*m.fallbacks, Fallback(str(m.strategy), to, why)),
        )
        if to == "abort":
            return _roll_back(m, f"did not converge: {why}")
        m = replace(m, lazy=to == "postcopy")
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
    if ev.phase is Phase.RESUME and "restore" not in m.results:
        m = _frozen_until(m, "rollback", ev.result.get("end"))  # the source ran again then
    if not left or (ev.phase is Phase.RESUME and not sequential):
        # The source runs again. A destination that never restored holds no
        # copy: its ABORT only tidies images, whenever it gets there.
        return replace(m, state=State.ROLLED_BACK, phase=Phase.FINISHED, attempt=0), []
    if sequential and ev.phase is Phase.ABORT:
        return _enter(m, Phase.RESUME)
    return m, []


def _paused(m: Migration, phase: str, start: float, ms: float) -> Migration:
    return replace(m, pauses=(*m.pauses, Pause(phase, float(start), round(float(ms), 1))))


def _frozen_until(m: Migration, phase: str, end: float | None) -> Migration:
    """The pause from the final dump's freeze to ``end``, if both are known."""
    start = m.results.get("dump", {}).get("freeze_start")
    if start is None or end is None:
        return m
    return _paused(m, phase, start, max(0.0, (float(end) - float(start)) * 1000))
