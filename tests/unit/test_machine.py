"""The migration state machine: every transition, rollback from every phase."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tasks.machine import (FORWARD, Event, Migration, Phase, Policy, Send, State, backoff,
                           next_step)

M = Migration(id="m-0123456789ab", container="web", src="a", dst="b", created=1.0, updated=1.0)


def run(m: Migration, *events: Event) -> tuple[Migration, list[Send]]:
    sends: list[Send] = []
    for ev in events:
        m, sends = next_step(m, ev)
    return m, sends


def done(phase: Phase, attempt: int = 1, **result: object) -> Event:
    return Event("done", 2.0, phase, attempt, result=dict(result))


def failed(phase: Phase, attempt: int = 1, transient: bool = False) -> Event:
    return Event("failed", 2.0, phase, attempt, error="boom", transient=transient)


def at(phase: Phase) -> Migration:
    """A running migration waiting for ``phase`` (attempt 1)."""
    m, _ = run(M, Event("start", 1.5))
    for p in FORWARD[: FORWARD.index(phase)]:
        m, _ = next_step(m, done(p))
    assert m.phase is phase
    return m


def test_start_sends_prepare_to_destination() -> None:
    m, sends = run(M, Event("start", 1.5))
    assert (m.state, m.phase, m.attempt) == (State.RUNNING, Phase.PREPARE, 1)
    assert sends == [Send(Phase.PREPARE, "b", False, 1)]


@pytest.mark.parametrize("phase,node,urgent", [
    (Phase.DUMP, "a", True), (Phase.TRANSFER, "a", True), (Phase.RESTORE, "b", True),
    (Phase.VERIFY, "b", True), (Phase.CLEANUP, "a", False),
])
def test_forward_chain_routes_each_phase(phase: Phase, node: str, urgent: bool) -> None:
    prev = FORWARD[FORWARD.index(phase) - 1]
    m, sends = next_step(at(prev), done(prev))
    assert m.phase is phase
    assert sends == [Send(phase, node, urgent, 1)]


def test_verify_is_the_point_of_no_return_and_cleanup_finishes() -> None:
    m, _ = next_step(at(Phase.VERIFY), done(Phase.VERIFY))
    assert m.past_no_return
    m, sends = next_step(m, done(Phase.CLEANUP))
    assert (m.state, m.phase, sends) == (State.DONE, Phase.FINISHED, [])


def test_results_are_kept_per_phase() -> None:
    m, _ = next_step(at(Phase.PREPARE), done(Phase.PREPARE, address="h:1"))
    assert m.results["prepare"] == {"address": "h:1"}


@pytest.mark.parametrize("phase", [Phase.PREPARE, Phase.DUMP, Phase.TRANSFER])
def test_permanent_failure_before_restore_resumes_source_and_aborts_destination(phase: Phase) -> None:
    m, sends = next_step(at(phase), failed(phase))
    assert m.state is State.ROLLING_BACK
    assert set(sends) == {Send(Phase.RESUME, "a", True, 1), Send(Phase.ABORT, "b", True, 1)}
    m, _ = next_step(m, done(Phase.ABORT))
    assert m.state is State.ROLLING_BACK
    m, sends = next_step(m, done(Phase.RESUME))
    assert (m.state, sends) == (State.ROLLED_BACK, [])
    assert any("failed" in e for e in m.errors)


@pytest.mark.parametrize("phase", [Phase.RESTORE, Phase.VERIFY])
def test_failure_once_a_copy_may_run_on_destination_aborts_it_before_resuming(phase: Phase) -> None:
    m, sends = next_step(at(phase), failed(phase))
    assert sends == [Send(Phase.ABORT, "b", True, 1)]
    m, sends = next_step(m, done(Phase.ABORT))
    assert sends == [Send(Phase.RESUME, "a", True, 1)]
    m, _ = next_step(m, done(Phase.RESUME))
    assert m.state is State.ROLLED_BACK


@pytest.mark.parametrize("phase", FORWARD[:-1])
def test_transient_failure_retries_the_same_phase_with_backoff(phase: Phase) -> None:
    m, sends = next_step(at(phase), failed(phase, transient=True))
    assert (m.state, m.phase, m.attempt) == (State.RUNNING, phase, 2)
    assert len(sends) == 1 and sends[0].attempt == 2 and sends[0].countdown > 0


def test_transient_failures_beyond_the_budget_roll_back() -> None:
    m = at(Phase.TRANSFER)
    for attempt in (1, 2):
        m, _ = next_step(m, failed(Phase.TRANSFER, attempt, transient=True))
    m, _ = next_step(m, failed(Phase.TRANSFER, 3, transient=True))
    assert m.state is State.ROLLING_BACK


def test_cleanup_failure_never_rolls_back() -> None:
    m, _ = next_step(at(Phase.VERIFY), done(Phase.VERIFY))
    for attempt in range(1, Policy().rollback_attempts):
        m, sends = next_step(m, failed(Phase.CLEANUP, attempt))
        assert m.state is State.RUNNING and sends[0].phase is Phase.CLEANUP
    m, sends = next_step(m, failed(Phase.CLEANUP, Policy().rollback_attempts))
    assert m.state is State.DONE and "left frozen" in m.errors[-1]


@pytest.mark.parametrize("phase", FORWARD[:-1])
def test_cancel_before_the_point_of_no_return_rolls_back(phase: Phase) -> None:
    m, sends = next_step(at(phase), Event("cancel", 2.0))
    assert m.state is State.ROLLING_BACK and sends
    assert "cancelled" in m.errors[-1]


def test_cancel_after_the_point_of_no_return_changes_nothing() -> None:
    m, _ = next_step(at(Phase.VERIFY), done(Phase.VERIFY))
    m2, sends = next_step(m, Event("cancel", 3.0))
    assert sends == [] and m2.state is State.RUNNING and m2.phase is Phase.CLEANUP


def test_stale_events_change_nothing() -> None:
    m = at(Phase.TRANSFER)
    for ev in (done(Phase.DUMP), done(Phase.TRANSFER, attempt=2), failed(Phase.PREPARE),
               Event("start", 2.0)):
        m2, sends = next_step(m, ev)
        assert sends == [] and replace(m2, updated=m.updated) == m


def test_a_phase_done_after_cancel_is_ignored() -> None:
    m, _ = next_step(at(Phase.VERIFY), Event("cancel", 2.0))
    m2, sends = next_step(m, done(Phase.VERIFY))
    assert sends == [] and not m2.past_no_return


def test_failed_rollback_ends_failed_with_where_the_container_is() -> None:
    m, _ = next_step(at(Phase.DUMP), failed(Phase.DUMP))
    for attempt in range(1, Policy().rollback_attempts):
        m, sends = next_step(m, failed(Phase.RESUME, attempt))
        assert sends[0].phase is Phase.RESUME
    m, _ = next_step(m, failed(Phase.RESUME, Policy().rollback_attempts))
    assert m.state is State.FAILED and "could not be resumed" in m.errors[-1]


def test_final_states_ignore_everything() -> None:
    m, _ = next_step(at(Phase.DUMP), failed(Phase.DUMP))
    m, _ = run(m, done(Phase.ABORT), done(Phase.RESUME))
    for ev in (Event("cancel", 3.0), done(Phase.DUMP), Event("start", 3.0)):
        assert next_step(m, ev)[1] == []


@given(attempt=st.integers(1, 50))
@settings(max_examples=100)
def test_backoff_is_bounded_and_grows(attempt: int) -> None:
    p = Policy()
    b = backoff(M, attempt, p)
    assert p.backoff_s <= b <= p.backoff_max_s * 1.2
    assert backoff(M, attempt + 1, p) >= min(b, p.backoff_max_s)


@given(events=st.lists(st.tuples(st.sampled_from(["done", "failed", "cancel"]),
                                 st.sampled_from(list(Phase)), st.integers(1, 4), st.booleans()),
                       max_size=30))
@settings(max_examples=300)
def test_never_both_rolled_back_and_past_the_point_of_no_return(events: list) -> None:
    m, _ = next_step(M, Event("start", 1.0))
    for kind, phase, attempt, transient in events:
        m, _ = next_step(m, Event(kind, 2.0, phase, attempt, error="x", transient=transient))
        assert not (m.past_no_return and m.state in (State.ROLLING_BACK, State.ROLLED_BACK))
