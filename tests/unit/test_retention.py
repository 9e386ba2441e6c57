"""Retention: which finished migrations the policy drops (tasks.core.retention)."""

from __future__ import annotations

import pytest

from tasks.core.retention import DAY_S, Entry, Retention, logs_to_drop, may_drop, to_drop
from workers.errors import BadRequest

NOW = 100 * DAY_S


def rows(*ages_days: float, busy: tuple[int, ...] = ()) -> list[Entry]:
    """Entries oldest first, created ``ages_days`` before NOW; ``busy``: indexes in flight."""
    return [
        Entry(f"m-{i:012x}", NOW - age * DAY_S, i not in busy) for i, age in enumerate(ages_days)
    ]


@pytest.mark.parametrize(
    ("entries", "total", "policy", "dropped"),
    [
        # nothing old, under the count: all kept
        (rows(3, 2, 1), 3, Retention(30, 10), []),
        # past the age: the old ones go
        (rows(40, 31, 29, 1), 4, Retention(30, 10), [0, 1]),
        # over the count: the oldest surplus goes, the age would keep them
        (rows(5, 4, 3, 2, 1), 5, Retention(30, 3), [0, 1]),
        # whichever keeps fewer: the age drops 3, the count only 1
        (rows(50, 45, 40, 1), 4, Retention(30, 3), [0, 1, 2]),
        # whichever keeps fewer: the count drops 3, the age only 1
        (rows(50, 5, 4, 3, 2), 5, Retention(30, 2), [0, 1, 2]),
        # in flight is never dropped, however old or far beyond the count
        (rows(400, 40, 3, 2, 1, busy=(0,)), 5, Retention(30, 2), [1, 2]),
        # a batch of the index: the total counts the entries not read
        (rows(5, 4), 1000, Retention(30, 999), [0]),
        (rows(5, 4), 1000, Retention(30, 1000), []),
        # exactly at the cutoff is kept
        (rows(30), 1, Retention(30, 10), []),
        ([], 0, Retention(), []),
    ],
)
def test_to_drop(entries: list[Entry], total: int, policy: Retention, dropped: list[int]) -> None:
    assert to_drop(entries, total, NOW, policy) == [entries[i].id for i in dropped]


def test_what_is_kept_is_the_newest_and_every_one_in_flight() -> None:
    entries = rows(*range(60, 0, -1), busy=(0, 7, 30))
    got = set(to_drop(entries, len(entries), NOW, Retention(days=25, migrations=20)))
    kept = [e for e in entries if e.id not in got]
    assert {entries[i].id for i in (0, 7, 30)} <= {e.id for e in kept}
    finals = [e for e in kept if e.final]
    assert all(NOW - e.created <= 25 * DAY_S for e in finals)
    assert len(kept) <= 20 + 3


@pytest.mark.parametrize(
    ("days", "count", "why"),
    [
        (0, 10, "FERRY_RETENTION_DAYS=0"),
        (-1, 10, "FERRY_RETENTION_DAYS=-1"),
        (float("nan"), 10, "FERRY_RETENTION_DAYS=nan"),
        (30, 0, "FERRY_RETENTION_MIGRATIONS=0"),
    ],
)
def test_a_bound_that_keeps_nothing_is_refused(days: float, count: int, why: str) -> None:
    with pytest.raises(BadRequest, match=why):
        Retention(days, count)


def test_logs_of_pruned_migrations_go() -> None:
    assert logs_to_drop(["m-a", "m-b", "m-c"], [True, False, False]) == ["m-b", "m-c"]
    assert logs_to_drop([], []) == []


@pytest.mark.parametrize(
    ("total", "oldest_age_days", "expected"),
    [(10, 29, False), (10, 30, False), (11, 1, True), (10, 31, True), (0, 0, False)],
)
def test_may_drop_looks_first_and_agrees_with_to_drop(
    total: int, oldest_age_days: float, expected: bool
) -> None:
    policy = Retention(days=30, migrations=10)
    assert may_drop(total, NOW - oldest_age_days * DAY_S, NOW, policy) is expected
    entries = rows(*[oldest_age_days] * total)  # all finished: to_drop drops some iff may_drop
    assert bool(to_drop(entries, total, NOW, policy)) is expected
