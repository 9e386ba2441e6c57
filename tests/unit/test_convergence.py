"""The pre-copy stop rule: one table row per rule, then properties."""

from __future__ import annotations

import doctest
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tasks.core.convergence
from tasks.core.convergence import (
    Continue,
    Estimates,
    FallBack,
    FinalDump,
    IterationStats,
    Limits,
    bytes_left,
    decide,
    expected_downtime_ms,
    unchanged_share,
)
from workers.errors import BadRequest

TOTAL = 131072  # 512 MiB of 4 KiB pages
EST = Estimates(dump_ms=80, restore_ms=120, bandwidth_bps=100e6)


def p(
    i: int, written: int, rate: float = 20e6, secs: float = 1.0, freeze: float = 0.0
) -> IterationStats:
    """A pass that wrote ``written`` pages; the rest were unchanged (pass 1: none)."""
    unchanged = 0 if i == 1 else TOTAL - written
    return IterationStats(i, TOTAL, written, unchanged, written * 4096, secs, freeze, rate)


def passes(*written: int, rate: float = 20e6, secs: float = 1.0) -> list[IterationStats]:
    return [p(i, w, rate, secs) for i, w in enumerate(written, 1)]


HARD = Limits(hard_downtime_cap=True)
ABORT = Limits(fallback="abort")

# (history, limits, estimates, decision type, rule, fallback target)
TABLE = [
    ("downtime", passes(TOTAL, 50000, secs=0.5), Limits(), EST, FinalDump, "downtime", None),
    ("idle", passes(TOTAL, rate=0.0), Limits(), EST, FinalDump, "downtime", None),
    ("first-pass", passes(TOTAL, secs=5.0), Limits(), EST, Continue, "continue", None),
    ("goal", passes(TOTAL, 30000, secs=2.0), Limits(), EST, FinalDump, "goal", None),
    ("goal-hard", passes(TOTAL, 30000, secs=2.0), HARD, EST, Continue, "continue", None),
    ("min-pages", [p(1, 64, secs=2.0)], Limits(), EST, FinalDump, "min-pages", None),
    ("above-min", [p(1, 65, secs=2.0)], Limits(), EST, Continue, "continue", None),
    ("max-iter", passes(*[TOTAL] * 10, secs=2.0), Limits(), EST, FinalDump, "max-iterations", None),
    (
        "max-iter-9",
        passes(*[int(TOTAL * 0.8**k) for k in range(9)], secs=2.0),
        Limits(goal_unchanged=1.0),
        EST,
        Continue,
        "continue",
        None,
    ),
    (
        "saturated",
        passes(TOTAL, 120000, secs=2.0),
        Limits(),
        EST,
        FallBack,
        "saturated",
        "postcopy",
    ),
    ("below-saturated", passes(TOTAL, 117000, secs=2.0), Limits(), EST, Continue, "continue", None),
    (
        "stalled",
        passes(TOTAL, 60000, 56000, 53000, secs=2.0),
        Limits(fallback="cold"),
        EST,
        FallBack,
        "stalled",
        "cold",
    ),
    (
        "shrinking",
        passes(TOTAL, 60000, 56000, 50000, secs=2.0),
        Limits(),
        EST,
        Continue,
        "continue",
        None,
    ),
    (
        "max-iter-hard",
        passes(*[TOTAL] * 10, secs=2.0),
        HARD,
        EST,
        FallBack,
        "max-iterations",
        "postcopy",
    ),
    (
        "max-iter-3",
        passes(TOTAL, TOTAL, TOTAL, secs=2.0),
        Limits(max_iterations=3),
        EST,
        FinalDump,
        "max-iterations",
        None,
    ),
    (
        "growth",
        passes(TOTAL, 40000, 44001, 48402, secs=2.0),
        ABORT,
        EST,
        FallBack,
        "growth",
        "abort",
    ),
    (  # grew once: not p.haul's growth, but not shrinking either
        "growth-once",
        passes(TOTAL, 40000, 44001, 44001, secs=2.0),
        Limits(),
        EST,
        FallBack,
        "stalled",
        "postcopy",
    ),
    (
        "growth-10pc",
        passes(TOTAL, 40000, 44000, 48400, secs=2.0),
        Limits(),
        EST,
        FallBack,
        "stalled",
        "postcopy",
    ),
    (
        "growth-cold",
        passes(TOTAL, 20000, 30000, 45000, secs=2.0),
        Limits(fallback="cold"),
        EST,
        FallBack,
        "growth",
        "cold",
    ),
    ("dirty-rate", passes(TOTAL, rate=100e6), Limits(), EST, FallBack, "dirty-rate", "postcopy"),
    ("dirty-below", passes(TOTAL, rate=99e6), Limits(), EST, Continue, "continue", None),
    (
        "floor-hard",
        passes(TOTAL, 100),
        HARD,
        Estimates(200, 150, 100e6),
        FallBack,
        "floor",
        "postcopy",
    ),
    (
        "floor-soft",
        passes(TOTAL, 100),
        Limits(),
        Estimates(200, 150, 100e6),
        FinalDump,
        "goal",
        None,
    ),
    (
        "freeze-floor",
        [p(1, TOTAL, rate=0.0), p(2, 100, rate=0.0, freeze=400)],
        Limits(),
        EST,
        FinalDump,
        "goal",
        None,
    ),
    (  # it would go on, but each pass (a delta dump) froze the tree 900 ms: fall back
        "pass-freeze",
        [p(1, TOTAL, freeze=900), p(2, 60000, rate=20e6, freeze=900)],
        Limits(),
        EST,
        FallBack,
        "freeze",
        "postcopy",
    ),
    (
        "no-bandwidth",
        passes(TOTAL),
        Limits(),
        Estimates(80, 120, 0.0),
        FallBack,
        "dirty-rate",
        "postcopy",
    ),
]


@pytest.mark.parametrize(
    ("history", "limits", "est", "kind", "rule", "to"),
    [pytest.param(*row[1:], id=row[0]) for row in TABLE],
)
def test_decide_table(history, limits, est, kind, rule, to) -> None:
    d = decide(history, limits, est)
    assert type(d) is kind
    assert d.rule == rule
    assert d.reason.startswith(rule + ":")
    if to is not None:
        assert isinstance(d, FallBack) and d.to == to


def test_docstring_example_numbers() -> None:
    d = decide(passes(TOTAL, 26000, rate=8e6, secs=1.1), Limits(), EST)
    assert isinstance(d, FinalDump)
    assert d.expected_downtime_ms == pytest.approx(88 + 80 + 120)


def test_freeze_counts_as_dump_time() -> None:
    # delta: each pass is a full dump, so the final one is at least that long
    d = decide([p(1, TOTAL, rate=0.0, freeze=500)], Limits(), EST)
    assert d.expected_downtime_ms == pytest.approx(500 + 120)


def test_bytes_left_capped_at_memory() -> None:
    assert bytes_left(p(1, TOTAL, rate=10e9, secs=10)) == TOTAL * 4096
    assert bytes_left(p(1, 16, rate=1e6, secs=2), page_size=16384) == 2e6


@pytest.mark.parametrize(
    ("left", "est", "ms"),
    [
        (0, EST, 200.0),
        (100e6, EST, 1200.0),
        (1, Estimates(0, 0, 0.0), math.inf),
        (0, Estimates(5, 5, 0.0), 10.0),
        (125e6, Estimates(10, 20, 125e6), 1030.0),
    ],
)
def test_expected_downtime_table(left: float, est: Estimates, ms: float) -> None:
    assert expected_downtime_ms(left, est) == pytest.approx(ms)


@pytest.mark.parametrize(
    "make",
    [
        lambda: decide([], Limits(), EST),
        lambda: decide([p(1, 10), p(3, 10)], Limits(), EST),
        lambda: decide([p(0, 10)], Limits(), EST),
        lambda: decide([IterationStats(1, 10, 5, 11, 0, 1, 0, 0)], Limits(), EST),
        lambda: decide([IterationStats(1, 10, 5, 0, 0, -1, 0, 0)], Limits(), EST),
        lambda: expected_downtime_ms(-1, EST),
        lambda: Limits(max_iterations=0),
        lambda: Limits(goal_unchanged=1.5),
        lambda: Limits(downtime_limit_ms=0),
        lambda: Limits(fallback="warp"),  # type: ignore[arg-type]
        lambda: Limits(fallback="cold", hard_downtime_cap=True),
    ],
)
def test_bad_input_is_bad_request(make) -> None:
    with pytest.raises(BadRequest):
        make()


def test_window_of_history_is_accepted() -> None:
    # a caller may keep only the last few passes; numbering tells how many ran
    d = decide([p(9, TOTAL, secs=2.0), p(10, TOTAL, secs=2.0)], Limits(), EST)
    assert d.rule == "max-iterations"


def test_worked_example_in_docstring() -> None:
    assert doctest.testmod(tasks.core.convergence).failed == 0


# --- properties -------------------------------------------------------------


@st.composite
def pass_(draw: st.DrawFn, i: int) -> IterationStats:
    total = draw(st.integers(0, 1 << 20))
    written = draw(st.integers(0, total)) if i > 1 else total
    unchanged = draw(st.integers(0, total - written)) if i > 1 else 0
    return IterationStats(
        iteration=i,
        pages_total=total,
        pages_written=written,
        pages_unchanged=unchanged,
        bytes_sent=written * 4096,
        seconds=draw(st.floats(0, 100)),
        freeze_ms=draw(st.floats(0, 2000)),
        dirty_rate_bps=draw(st.floats(0, 1e9)),
    )


@st.composite
def histories(draw: st.DrawFn, max_len: int = 7) -> list[IterationStats]:
    start = draw(st.integers(1, 5))
    n = draw(st.integers(1, max_len))
    return [draw(pass_(start + k)) for k in range(n)]


limits_st = st.builds(
    Limits,
    max_iterations=st.integers(1, 6),
    goal_unchanged=st.floats(0.05, 1.0),
    downtime_limit_ms=st.floats(1, 5000),
    min_pages=st.integers(0, 1000),
    max_growth=st.floats(0, 1),
    fallback=st.sampled_from(["postcopy", "abort"]),
    hard_downtime_cap=st.booleans(),
) | st.builds(Limits, max_iterations=st.integers(1, 6), fallback=st.just("cold"))

est_st = st.builds(
    Estimates,
    dump_ms=st.floats(0, 1000),
    restore_ms=st.floats(0, 1000),
    bandwidth_bps=st.floats(0, 1e10),
    page_size=st.sampled_from([4096, 16384, 65536]),
)


@settings(max_examples=200, deadline=None)
@given(limits_st, est_st, st.data())
def test_never_continue_at_iteration_limit(limits, est, data) -> None:
    n = data.draw(st.integers(limits.max_iterations, limits.max_iterations + 2))
    h = [data.draw(pass_(i)) for i in range(1, n + 1)]
    assert not isinstance(decide(h, limits, est), Continue)


@settings(max_examples=200, deadline=None)
@given(st.floats(0, 1e12), st.floats(0, 1e12), est_st)
def test_expected_downtime_monotone_in_bytes(a: float, b: float, est: Estimates) -> None:
    lo, hi = sorted((a, b))
    assert expected_downtime_ms(lo, est) <= expected_downtime_ms(hi, est)


@settings(max_examples=200, deadline=None)
@given(histories(), limits_st, est_st)
def test_the_named_rule_really_fired(h, limits, est) -> None:
    d = decide(h, limits, est)
    last = h[-1]
    assert d.reason.startswith(f"{d.rule}:")
    cap = limits.downtime_limit_ms
    down = d.expected_downtime_ms
    if isinstance(d, FinalDump):
        assert d.rule in {"downtime", "goal", "min-pages", "max-iterations"}
        if limits.hard_downtime_cap:
            assert down <= cap  # a hard cap is never broken by a final dump
        if d.rule == "downtime":
            assert down <= cap
        elif d.rule == "goal":
            assert unchanged_share(last) >= limits.goal_unchanged
        elif d.rule == "min-pages":
            assert last.pages_written <= limits.min_pages
        else:
            assert last.iteration >= limits.max_iterations
    elif isinstance(d, FallBack):
        assert d.to == limits.fallback
        assert down > cap
        if d.rule == "saturated":
            assert (
                last.iteration >= 2 and last.pages_written >= limits.saturation * last.pages_total
            )
        elif d.rule == "stalled":
            assert (
                len(h) >= 3 and h[-1].pages_written >= (1 - limits.min_shrink) * h[-2].pages_written
            )
    else:
        assert down > cap and last.iteration < limits.max_iterations


@settings(max_examples=200, deadline=None)
@given(histories(max_len=3), limits_st, est_st, st.floats(1, 1e6))
def test_more_bandwidth_never_makes_downtime_worse(h, limits, est, extra) -> None:
    faster = Estimates(est.dump_ms, est.restore_ms, est.bandwidth_bps + extra, est.page_size)
    assert (
        decide(h, limits, faster).expected_downtime_ms
        <= decide(h, limits, est).expected_downtime_ms
    )
