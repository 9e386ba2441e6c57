"""A post-copy tree's waits for pages, joined into the pauses a workload feels."""

from __future__ import annotations

import doctest

import pytest
from hypothesis import given
from hypothesis import strategies as st

import tasks.core.pauses
from tasks.core.pauses import JOIN_S, Pause, joined, longest, stalled, total_ms


def test_the_doctests() -> None:
    assert doctest.testmod(tasks.core.pauses).failed == 0


@pytest.mark.parametrize(
    ("waits", "expected"),
    [
        ([], ()),
        ([(1.0, 5.0)], ((1.0, 5.0),)),
        # 6 ms between waits of 100 and 40 ms: one pause, gap included
        ([(1.0, 100.0), (1.106, 40.0)], ((1.0, 146.0),)),
        # 12 ms is past the window: two pauses
        ([(1.0, 100.0), (1.112, 40.0)], ((1.0, 100.0), (1.112, 40.0))),
        # out of order (a wait is logged when its page came), overlapping
        ([(1.05, 80.0), (1.0, 60.0)], ((1.0, 130.0),)),
        # a tree that runs 4 ms between waits of 0.3 ms is not paused throughout
        ([(1.0, 0.3), (1.0043, 0.3), (1.0086, 0.3)], ((1.0, 0.3), (1.0043, 0.3), (1.0086, 0.3))),
        # ...but a short wait right after a long one, 3 ms on, continues it
        ([(1.0, 200.0), (1.203, 0.5)], ((1.0, 203.5),)),
        # a chain of long waits with short gaps is one pause end to end
        ([(1.0, 300.0), (1.307, 150.0), (1.464, 40.0), (1.51, 9.0)], ((1.0, 519.0),)),
    ],
)
def test_joined(
    waits: list[tuple[float, float]], expected: tuple[tuple[float, float], ...]
) -> None:
    assert joined(waits) == expected


def test_the_window_is_a_parameter() -> None:
    waits = [(1.0, 100.0), (1.112, 40.0)]
    assert joined(waits, window_s=0.015) == ((1.0, 152.0),)
    assert joined(waits, window_s=0.005) == ((1.0, 100.0), (1.112, 40.0))


waits_st = st.lists(
    st.tuples(
        st.floats(0.0, 10.0, allow_nan=False),
        st.floats(0.0, 500.0, allow_nan=False),
    ),
    max_size=40,
)


@given(waits_st)
def test_joining_keeps_every_wait_inside_one_pause_and_never_overlaps(
    waits: list[tuple[float, float]],
) -> None:
    out = joined(waits)
    for a, b in zip(out, out[1:], strict=False):
        assert b[0] >= a[0] + a[1] / 1000 - 1e-6
    for s, ms in waits:
        assert any(p - 1e-6 <= s and s + ms / 1000 <= p + pms / 1000 + 1e-3 for p, pms in out)


@given(waits_st)
def test_a_joined_pause_is_never_more_gap_than_wait(waits: list[tuple[float, float]]) -> None:
    """No reported pause is mostly time in which the tree could have run: each gap
    joined is shorter than a wait beside it, so waits fill over a third of it."""
    out = joined(waits)
    for start, ms in out:
        end = start + ms / 1000
        inside = sorted((s, s + w / 1000) for s, w in waits if start - 1e-6 <= s <= end)
        covered, reach = 0.0, start
        for s, e in inside:
            covered += max(0.0, e - max(s, reach))
            reach = max(reach, e)
        assert covered * 1000 >= ms / 3 - 1e-3


def test_the_window_is_eight_ms() -> None:
    assert JOIN_S == 0.008


def test_a_wait_soon_after_the_resume_lengthens_the_final_freeze() -> None:
    dump = Pause("dump", 10.0, 200.0)  # resumed at 10.2
    ps = stalled(
        [Pause("precopy", 5.0, 90.0), dump], [(10.206, 300.0), (10.511, 120.0), (12.0, 30.0)]
    )
    assert [(p.phase, p.ms) for p in ps] == [("precopy", 90.0), ("dump", 631.0), ("fault", 30.0)]
    assert longest(ps) == Pause("dump", 10.0, 631.0)
    assert total_ms(ps) == 751.0


def test_waits_after_a_gap_of_their_own_are_fault_pauses() -> None:
    ps = stalled([Pause("dump", 10.0, 200.0)], [(10.3, 50.0), (10.355, 40.0)])
    assert [(p.phase, p.ms) for p in ps] == [("dump", 200.0), ("fault", 95.0)]


def test_without_a_final_freeze_the_waits_are_all_faults() -> None:
    ps = stalled([Pause("precopy", 1.0, 80.0)], [(5.0, 20.0), (5.025, 20.0)])
    assert [(p.phase, p.ms) for p in ps] == [("precopy", 80.0), ("fault", 45.0)]
