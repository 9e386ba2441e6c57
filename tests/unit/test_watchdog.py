"""Timeouts and lost steps, and what the state machine makes of them."""

from __future__ import annotations

from dataclasses import replace

import pytest

from tasks.core.machine import next_step
from tasks.core.migration import Event, Migration, Phase, State
from tasks.core.options import Options
from tasks.core.watchdog import Timeouts, check, total_limit_s

M = Migration(
    id="m-0123456789ab",
    container="web",
    src="a",
    dst="b",
    state=State.RUNNING,
    phase=Phase.DUMP,
    step=3,
    attempt=1,
    created=0.0,
    updated=10.0,
    options=Options(memory_bytes=2 << 30),
)
UP = {"a": True, "b": True}
T = Timeouts()


@pytest.mark.parametrize("memory,limit", [(0, 120.0), (1 << 30, 800.0), (3 << 30, 2400.0)])
def test_the_total_limit_scales_per_gib_with_a_floor(memory: int, limit: float) -> None:
    assert total_limit_s(replace(M, options=Options(memory_bytes=memory)), T) == limit


@pytest.mark.parametrize(
    "m,now,alive,restarted,kind",
    [
        (M, 20.0, UP, {}, None),
        (M, 20.0, {"a": False, "b": True}, {}, None),  # down, but not yet node_down_s quiet
        (M, 30.0, {"a": False, "b": True}, {}, "stalled"),
        (M, 30.0, {"a": True, "b": False}, {}, None),  # the other node is not in this step
        (M, 200.0, UP, {}, "stalled"),  # no progress for 190 s
        (M, 20.0, UP, {"a/urgent": 15.0}, "stalled"),  # the urgent worker restarted mid-step
        (M, 20.0, UP, {"a/main": 15.0}, None),  # a different slot restarted
        (M, 1700.0, UP, {}, "timeout"),
        (replace(M, past_no_return=True, phase=Phase.CLEANUP), 1700.0, UP, {}, "stalled"),
        (replace(M, state=State.DONE), 5000.0, {}, {}, None),
        (replace(M, state=State.PENDING, phase=None), 5.0, {}, {}, None),
        (replace(M, state=State.PENDING, phase=None), 5000.0, {}, {}, "start"),
    ],
)
def test_check(m: Migration, now: float, alive: dict, restarted: dict, kind: str | None) -> None:
    ev = check(m, now, alive, T, restarted)
    assert (ev.kind if ev else None) == kind


def test_a_stalled_step_is_sent_again_with_a_new_step() -> None:
    ev = check(M, 200.0, UP, T)
    assert ev is not None
    m, sends = next_step(M, ev)
    assert m.phase is Phase.DUMP and m.attempt == 2 and sends[0].step == m.step != M.step


def test_a_step_stalled_beyond_the_budget_rolls_back() -> None:
    m = replace(M, attempt=3)
    m, sends = next_step(m, Event("stalled", 200.0, Phase.DUMP, 3, error="lost"))
    assert m.state is State.ROLLING_BACK and {s.phase for s in sends} == {Phase.RESUME, Phase.ABORT}


def test_a_synced_dir_s_first_pass_is_not_on_the_migration_s_clock() -> None:
    small = replace(M, options=Options(memory_bytes=0), created=0.0, updated=990.0)  # limit 120 s
    in_sync = replace(small, phase=Phase.SYNC)
    assert check(in_sync, 1000.0, UP, T) is None  # 1000 s into a first pass that reports progress
    after = replace(small, results={"sync": {"wall_ms": 950_000.0}})
    assert check(after, 1000.0, UP, T) is None  # 50 s of the rest
    late = check(after, 1100.0, UP, T)
    assert late is not None and late.kind == "timeout" and "after 150 s" in late.error


def test_a_timeout_rolls_back_before_the_point_of_no_return() -> None:
    m, _ = next_step(M, Event("timeout", 1700.0, error="timed out"))
    assert m.state is State.ROLLING_BACK and "timed out" in m.errors[-1]


def test_a_timeout_after_the_point_of_no_return_changes_nothing() -> None:
    m = replace(M, past_no_return=True, phase=Phase.CLEANUP)
    assert next_step(m, Event("timeout", 1700.0))[1] == []


def test_force_pushes_a_precopy_to_its_final_dump() -> None:
    m = replace(
        M,
        phase=Phase.PRECOPY,
        strategy="delta",
        options=Options(timeout_action="force", lazy_ok=True),
    )
    m, sends = next_step(m, Event("timeout", 1700.0, error="timed out"))
    assert [s.phase for s in sends] == [Phase.DUMP]
    assert m.phase is Phase.DUMP and m.lazy and "forcing completion" in m.warnings[-1]


def test_a_lost_rollback_step_is_sent_again() -> None:
    m = replace(
        M, state=State.ROLLING_BACK, phase=Phase.RESUME, rollback=(Phase.ABORT, Phase.RESUME)
    )
    m2, sends = next_step(m, Event("stalled", 200.0, Phase.RESUME, 3, error="lost"))
    assert {s.phase for s in sends} == {Phase.ABORT, Phase.RESUME} and m2.step > m.step


def test_worked_example_in_docstring() -> None:
    import doctest

    import tasks.core.watchdog

    assert doctest.testmod(tasks.core.watchdog).failed == 0
