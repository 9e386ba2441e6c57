"""The migration state machine: every transition, rollback from every phase."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tasks.core.convergence import Limits
from tasks.core.machine import backoff, next_step
from tasks.core.migration import FREEZE, Event, Migration, Phase, Policy, Send, State, phases
from tasks.core.options import Options
from tasks.core.summary import downtime

M = Migration(id="m-0123456789ab", container="web", src="a", dst="b", created=1.0, updated=1.0)
COLD = phases("cold", False)


def done(m: Migration, **result: object) -> Event:
    assert m.phase is not None
    return Event("done", 2.0, m.phase, m.step, result=dict(result))


def failed(m: Migration, transient: bool = False, phase: Phase | None = None) -> Event:
    return Event("failed", 2.0, phase or m.phase, m.step, error="boom", transient=transient)


def at(phase: Phase, m: Migration = M) -> Migration:
    """A running migration waiting for ``phase``."""
    m, _ = next_step(m, Event("start", 1.5))
    while m.phase is not phase:
        m, _ = next_step(m, done(m))
    return m


def test_start_sends_prepare_to_destination() -> None:
    m, sends = next_step(M, Event("start", 1.5))
    assert (m.state, m.phase, m.attempt) == (State.RUNNING, Phase.PREPARE, 1)
    assert sends == [Send(Phase.PREPARE, "b", False, m.step)]


@pytest.mark.parametrize(
    "phase,node,urgent",
    [
        (Phase.DUMP, "a", True),
        (Phase.TRANSFER, "a", True),
        (Phase.RESTORE, "b", True),
        (Phase.VERIFY, "b", True),
        (Phase.CLEANUP, "a", False),
    ],
)
def test_forward_chain_routes_each_phase(phase: Phase, node: str, urgent: bool) -> None:
    m = at(COLD[COLD.index(phase) - 1])
    m, sends = next_step(m, done(m))
    assert m.phase is phase
    assert sends == [Send(phase, node, urgent, m.step)]


def test_every_send_has_a_new_step() -> None:
    m, steps = at(Phase.PREPARE), set()
    while m.state is State.RUNNING:
        assert m.step not in steps
        steps.add(m.step)
        m, _ = next_step(m, done(m))
    assert m.state is State.DONE


def test_verify_is_the_point_of_no_return_and_cleanup_finishes() -> None:
    m = at(Phase.VERIFY)
    m, _ = next_step(m, done(m))
    assert m.past_no_return
    m, sends = next_step(m, done(m))
    assert (m.state, m.phase, sends) == (State.DONE, Phase.FINISHED, [])


def test_postcopy_waits_for_every_page_before_the_point_of_no_return() -> None:
    lazy = replace(M, strategy="postcopy", lazy=True)
    m = at(Phase.RESTORE, lazy)
    m, sends = next_step(m, done(m))
    assert sends == [Send(Phase.PAGES, "a", False, m.step)] and not m.past_no_return
    m, sends = next_step(m, failed(m))
    assert m.state is State.ROLLING_BACK and sends == [Send(Phase.ABORT, "b", True, m.step)]


def test_results_are_kept_per_phase() -> None:
    m = at(Phase.PREPARE)
    m, _ = next_step(m, done(m, address="h:1"))
    assert m.results["prepare"] == {"address": "h:1"}


@pytest.mark.parametrize("phase", [Phase.PREPARE, Phase.DUMP, Phase.TRANSFER])
def test_permanent_failure_before_restore_resumes_source_and_aborts_destination(
    phase: Phase,
) -> None:
    m, sends = next_step(at(phase), failed(at(phase)))
    assert m.state is State.ROLLING_BACK
    assert {(s.phase, s.node) for s in sends} == {(Phase.RESUME, "a"), (Phase.ABORT, "b")}
    m, _ = next_step(m, Event("done", 3.0, Phase.ABORT))
    assert m.state is State.ROLLING_BACK
    m, sends = next_step(m, Event("done", 3.0, Phase.RESUME))
    assert (m.state, sends) == (State.ROLLED_BACK, [])
    assert any("failed" in e for e in m.errors)


@pytest.mark.parametrize("phase", [Phase.RESTORE, Phase.VERIFY])
def test_failure_once_a_copy_may_run_on_destination_aborts_it_before_resuming(phase: Phase) -> None:
    m = at(phase)
    m, sends = next_step(m, failed(m))
    assert [(s.phase, s.node) for s in sends] == [(Phase.ABORT, "b")]
    m, sends = next_step(m, done(m))
    assert [(s.phase, s.node) for s in sends] == [(Phase.RESUME, "a")]
    m, _ = next_step(m, done(m))
    assert m.state is State.ROLLED_BACK


@pytest.mark.parametrize("phase", [Phase.PREPARE, Phase.VERIFY])
def test_transient_failure_retries_the_same_phase_with_backoff(phase: Phase) -> None:
    m = at(phase)
    m, sends = next_step(m, failed(m, transient=True))
    assert (m.state, m.phase, m.attempt) == (State.RUNNING, phase, 2)
    assert len(sends) == 1 and sends[0].step == m.step and sends[0].countdown > 0


@pytest.mark.parametrize("phase", [Phase.DUMP, Phase.TRANSFER, Phase.RESTORE])
def test_a_transient_failure_inside_the_freeze_window_rolls_back_at_once(phase: Phase) -> None:
    m = at(phase)
    m, _ = next_step(m, failed(m, transient=True))
    assert m.state is State.ROLLING_BACK


@pytest.mark.parametrize("phase", COLD[:-1])
def test_a_lost_step_is_sent_again_even_inside_the_freeze_window(phase: Phase) -> None:
    m = at(phase)
    m, sends = next_step(m, Event("stalled", 3.0, phase, m.step, error="worker restarted"))
    assert (m.state, m.phase, m.attempt) == (State.RUNNING, phase, 2)
    assert sends[0].step == m.step


def test_a_rollback_before_any_restore_ends_once_the_source_runs() -> None:
    m = at(Phase.TRANSFER)
    m, _ = next_step(m, failed(m))
    m, _ = next_step(m, Event("done", 3.0, Phase.RESUME))
    assert m.state is State.ROLLED_BACK  # the destination's abort only tidies, later


def test_a_rollback_whose_destination_never_answers_ends_failed_with_the_source_frozen() -> None:
    m = at(Phase.VERIFY)
    m, _ = next_step(m, failed(m))
    assert m.phase is Phase.ABORT
    for _ in range(Policy().rollback_attempts):
        m, sends = next_step(m, Event("stalled", 9.0, Phase.ABORT, m.step, error="b is away"))
        assert sends and m.state is State.ROLLING_BACK
    m, sends = next_step(m, Event("stalled", 9.0, Phase.ABORT, m.step, error="b is away"))
    assert m.state is State.FAILED and sends == []
    assert "a copy may remain on b; the source stays frozen on a" in m.errors[-1]


def test_retry_budgets_count_in_fields_not_in_error_texts() -> None:
    """Errors are for people: rewording one (or a record full of them) changes no budget."""
    m = at(Phase.VERIFY)
    m, _ = next_step(m, failed(m))
    m = replace(m, errors=(*m.errors, *["rollback stalled: an old text"] * 20))
    m, sends = next_step(m, Event("stalled", 9.0, Phase.ABORT, m.step, error="b is away"))
    assert m.state is State.ROLLING_BACK and sends
    assert m.retries == {"rollback stalled": 1}


def test_transient_failures_beyond_the_budget_roll_back() -> None:
    m = at(Phase.PREPARE)
    for _ in range(Policy().max_attempts - 1):
        m, _ = next_step(m, failed(m, transient=True))
        assert m.state is State.RUNNING
    m, _ = next_step(m, failed(m, transient=True))
    assert m.state is State.ROLLING_BACK


def test_cleanup_failure_never_rolls_back() -> None:
    m = at(Phase.VERIFY)
    m, _ = next_step(m, done(m))
    for _ in range(Policy().rollback_attempts - 1):
        m, sends = next_step(m, failed(m))
        assert m.state is State.RUNNING and sends[0].phase is Phase.CLEANUP
    m, sends = next_step(m, failed(m))
    assert m.state is State.DONE and "left frozen" in m.errors[-1]


@pytest.mark.parametrize("phase", COLD[:-1])
def test_cancel_before_the_point_of_no_return_rolls_back(phase: Phase) -> None:
    m, sends = next_step(at(phase), Event("cancel", 2.0))
    assert m.state is State.ROLLING_BACK and sends
    assert m.cancelled and "cancelled" in m.errors[-1]  # the flag decides; the text explains


def test_cancel_after_the_point_of_no_return_changes_nothing() -> None:
    m = at(Phase.VERIFY)
    m, _ = next_step(m, done(m))
    m2, sends = next_step(m, Event("cancel", 3.0))
    assert sends == [] and m2.state is State.RUNNING and m2.phase is Phase.CLEANUP
    assert not m2.cancelled


def test_stale_events_change_nothing() -> None:
    m = at(Phase.TRANSFER)
    for ev in (
        Event("done", 2.0, Phase.DUMP, m.step - 1),
        Event("done", 2.0, Phase.TRANSFER, m.step - 1),
        Event("failed", 2.0, Phase.PREPARE, 1),
        Event("start", 2.0),
    ):
        m2, sends = next_step(m, ev)
        assert sends == [] and replace(m2, updated=m.updated) == m


def test_a_phase_done_after_cancel_is_ignored() -> None:
    m = at(Phase.VERIFY)
    m2, _ = next_step(m, Event("cancel", 2.0))
    m3, sends = next_step(m2, done(m))
    assert sends == [] and not m3.past_no_return


def test_failed_rollback_ends_failed_with_where_the_container_is() -> None:
    m = at(Phase.DUMP)
    m, _ = next_step(m, failed(m))
    for _ in range(Policy().rollback_attempts - 1):
        m, sends = next_step(m, failed(m, phase=Phase.RESUME))
        assert sends[0].phase is Phase.RESUME
    m, _ = next_step(m, failed(m, phase=Phase.RESUME))
    assert m.state is State.FAILED and "could not be resumed" in m.errors[-1]


def test_final_states_ignore_everything() -> None:
    m = at(Phase.DUMP)
    m, _ = next_step(m, failed(m))
    m, _ = next_step(m, Event("done", 3.0, Phase.ABORT))
    m, _ = next_step(m, Event("done", 3.0, Phase.RESUME))
    assert m.state is State.ROLLED_BACK
    for ev in (Event("cancel", 3.0), Event("done", 3.0, Phase.DUMP, m.step), Event("start", 3.0)):
        assert next_step(m, ev)[1] == []


def _pass(n: int, written: int, seconds: float = 1.0, total: int = 65536) -> dict[str, object]:
    return {
        "iteration": n,
        "pages_total": total,
        "pages_written": written,
        "pages_unchanged": total - written,
        "bytes_sent": written * 4096,
        "seconds": seconds,
        "freeze_ms": 50.0,
        "dirty_rate_bps": written * 4096 / seconds / 10,
    }


def test_precopy_passes_until_the_stop_rule_says_final_dump() -> None:
    m = at(Phase.PRECOPY, replace(M, strategy="precopy", limits=Limits(downtime_limit_ms=300)))
    m, sends = next_step(m, done(m, **{"pass": _pass(1, 65536, seconds=4.0)}))
    assert m.phase is Phase.PRECOPY and sends[0].phase is Phase.PRECOPY
    m, sends = next_step(m, done(m, **{"pass": _pass(2, 500, seconds=0.1)}))
    assert m.phase is Phase.DUMP and sends == [Send(Phase.DUMP, "a", True, m.step)]
    assert m.results["decision"]["rule"] in ("downtime", "goal")
    assert len(m.passes) == 2


def test_each_delta_pass_is_rebuilt_on_the_destination_before_the_stop_rule() -> None:
    m = at(Phase.PRECOPY, replace(M, strategy="delta"))
    m, sends = next_step(m, done(m, **{"pass": _pass(1, 65536, seconds=4.0)}))
    assert m.phase is Phase.REBUILD and sends == [Send(Phase.REBUILD, "b", False, m.step)]
    assert "decision" not in m.results
    m, sends = next_step(m, done(m))
    assert m.phase is Phase.PRECOPY and "first pass" in m.results["decision"]["reason"]


def test_precopy_never_exceeds_the_iteration_limit() -> None:
    m = at(
        Phase.PRECOPY,
        replace(M, strategy="precopy", limits=Limits(max_iterations=3, goal_unchanged=1.0)),
    )
    n = 0
    while m.phase is Phase.PRECOPY:
        n += 1
        m, _ = next_step(m, done(m, **{"pass": _pass(n, 60000, seconds=10.0)}))
    assert n <= 3 and m.phase in (Phase.DUMP, Phase.RESUME)


def test_a_single_allowed_pass_goes_straight_to_the_final_dump() -> None:
    m = at(Phase.PRECOPY, replace(M, strategy="precopy", limits=Limits(max_iterations=1)))
    m, _ = next_step(m, done(m, **{"pass": _pass(1, 65536)}))
    assert m.phase is Phase.DUMP


@pytest.mark.parametrize(("lazy_ok", "to"), [(True, "postcopy"), (False, "cold")])
def test_a_workload_that_does_not_converge_falls_back(lazy_ok: bool, to: str) -> None:
    m = at(
        Phase.PRECOPY,
        replace(
            M,
            strategy="hybrid",
            limits=Limits(fallback="postcopy", downtime_limit_ms=10),
            options=Options(lazy_ok=lazy_ok),  # whether both nodes can run post-copy
        ),
    )
    m, _ = next_step(m, done(m, **{"pass": _pass(1, 60000, seconds=0.5)}))
    # dirtying 480 MB/s over a 480 MB/s link: it will never converge
    m, _ = next_step(m, done(m, **{"pass": {**_pass(2, 60000, 0.5), "dirty_rate_bps": 1e12}}))
    assert m.phase is Phase.DUMP and m.lazy is lazy_ok
    assert f"falling back to {to}" in m.warnings[-1]
    assert m.path == f"hybrid -> {to}" and m.fallbacks[0].why.startswith("saturated")


@given(attempt=st.integers(1, 50))
@settings(max_examples=100)
def test_backoff_is_bounded_and_grows(attempt: int) -> None:
    p = Policy()
    b = backoff(M, attempt, p)
    assert p.backoff_s <= b <= p.backoff_max_s * 1.2
    assert backoff(M, attempt + 1, p) >= min(b, p.backoff_max_s)


@given(
    events=st.lists(
        st.tuples(
            st.sampled_from(["done", "failed", "cancel"]),
            st.sampled_from(list(Phase)),
            st.integers(0, 12),
            st.booleans(),
        ),
        max_size=30,
    )
)
@settings(max_examples=300)
def test_never_both_rolled_back_and_past_the_point_of_no_return(events: list) -> None:
    m, _ = next_step(M, Event("start", 1.0))
    for kind, phase, step, transient in events:
        m, _ = next_step(m, Event(kind, 2.0, phase, step, error="x", transient=transient))
        assert not (m.past_no_return and m.state in (State.ROLLING_BACK, State.ROLLED_BACK))


SYNCED = replace(M, sync=("/srv/local/web",))


@pytest.mark.parametrize(
    "strategy,lazy,order",
    [
        (
            "cold",
            False,
            ["prepare", "sync", "dump", "transfer", "final_sync", "restore", "verify", "cleanup"],
        ),
        (
            "postcopy",
            True,
            [
                "prepare",
                "sync",
                "dump",
                "transfer",
                "final_sync",
                "restore",
                "pages",
                "verify",
                "cleanup",
            ],
        ),
        (
            "delta",
            False,
            [
                "prepare",
                "sync",
                "precopy",
                "dump",
                "transfer",
                "final_sync",
                "restore",
                "verify",
                "cleanup",
            ],
        ),
    ],
)
def test_sync_dirs_add_a_first_pass_and_a_final_one_in_the_freeze_window(
    strategy: str, lazy: bool, order: list[str]
) -> None:
    assert [p.value for p in phases(strategy, lazy, sync=True)] == order
    assert Phase.FINAL_SYNC in FREEZE and Phase.SYNC not in FREEZE


def test_without_sync_dirs_no_sync_phase_runs() -> None:
    m, seen = at(Phase.PREPARE), []
    while m.state is State.RUNNING:
        seen.append(m.phase)
        m, _ = next_step(m, done(m))
    assert Phase.SYNC not in seen and Phase.FINAL_SYNC not in seen


@pytest.mark.parametrize("phase,urgent", [(Phase.SYNC, False), (Phase.FINAL_SYNC, True)])
def test_sync_passes_run_on_the_source(phase: Phase, urgent: bool) -> None:
    m = at(phase, SYNCED)
    assert m.phase is phase
    prev = at(phases("cold", False, True)[phases("cold", False, True).index(phase) - 1], SYNCED)
    _, sends = next_step(prev, done(prev))
    assert sends == [Send(phase, "a", urgent, m.step)]


def test_a_failed_final_pass_rolls_back_at_once_and_aborts_the_destination() -> None:
    m = at(Phase.FINAL_SYNC, SYNCED)
    m, sends = next_step(m, failed(m, transient=True))
    assert m.state is State.ROLLING_BACK
    assert {(s.phase, s.node) for s in sends} == {(Phase.RESUME, "a"), (Phase.ABORT, "b")}


def test_a_transient_failure_of_the_first_pass_is_retried() -> None:
    m = at(Phase.SYNC, SYNCED)
    m, sends = next_step(m, failed(m, transient=True))
    assert (m.state, m.phase, m.attempt) == (State.RUNNING, Phase.SYNC, 2)
    assert sends[0].countdown > 0


def test_every_freeze_is_a_pause_and_downtime_is_the_longest() -> None:
    m = at(Phase.PRECOPY, replace(M, strategy="precopy"))
    m, _ = next_step(m, done(m, **{"pass": _pass(1, 65536), "pause": {"start": 10.0, "ms": 420.0}}))
    m, _ = next_step(m, done(m, **{"pass": _pass(2, 10), "pause": {"start": 12.0, "ms": 30.0}}))
    assert m.phase is Phase.DUMP
    m, _ = next_step(m, done(m, freeze_start=20.0, frozen_ms=50.0, freezing_ms=1.0))
    m, _ = next_step(m, done(m, wall_ms=40.0))  # transfer
    m, _ = next_step(m, done(m, end=20.2, wall_ms=60.0))  # restore: resumed 200 ms after
    assert [(p.phase, p.ms) for p in m.pauses] == [
        ("precopy", 420.0),
        ("precopy", 30.0),
        ("dump", 200.0),
    ]
    d = downtime(m)
    assert d is not None and d["downtime_ms"] == 420.0 and d["longest_pause"] == "precopy"
    assert d["paused_total_ms"] == 650.0 and d["pauses"] == 3 and d["final_pause_ms"] == 200.0


def test_a_rollback_after_the_final_dump_pauses_until_the_source_resumes() -> None:
    m = at(Phase.DUMP)
    m, _ = next_step(m, done(m, freeze_start=20.0, frozen_ms=50.0, freezing_ms=1.0))
    m, _ = next_step(m, failed(m))  # the transfer fails: roll back
    while m.state is State.ROLLING_BACK:
        phase = m.rollback[0]
        m, _ = next_step(m, Event("done", 3.0, phase, m.step, result={"end": 21.5}))
    assert m.state is State.ROLLED_BACK
    assert [(p.phase, p.ms) for p in m.pauses] == [("rollback", 1500.0)]
