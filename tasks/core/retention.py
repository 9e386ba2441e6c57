"""Retention: which finished migrations' records (and so their events and logs) go.

Pure: the oldest entries of the migration index, in creation order, and the
policy in; the ids to drop out. A record is kept while it is both younger
than ``days`` and among the newest ``migrations`` (whichever keeps fewer);
one still in flight is never dropped, whatever its age or rank, but it
counts towards ``migrations``.

Worked example: five records, the policy keeps three, so the two oldest go
unless in flight; ``m-…02`` is, and stays::

    >>> rows = [Entry(f"m-0000000000{i:02}", created=float(i), final=i != 2) for i in range(1, 6)]
    >>> to_drop(rows, total=5, now=10.0, policy=Retention(days=30, migrations=3))
    ['m-000000000001']
    >>> to_drop(rows, total=5, now=86400 * 30 + 3.5, policy=Retention(days=30, migrations=100))
    ['m-000000000001', 'm-000000000003']
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from workers.errors import BadRequest

DAY_S = 86400.0


@dataclass(frozen=True)
class Retention:
    """Keep a finished migration ``days`` and at most ``migrations`` of them."""

    days: float = 30.0
    migrations: int = 10_000

    def __post_init__(self) -> None:
        if not self.days > 0:
            raise BadRequest(f"bad FERRY_RETENTION_DAYS={self.days}: want a number of days > 0")
        if self.migrations < 1:
            raise BadRequest(f"bad FERRY_RETENTION_MIGRATIONS={self.migrations}: want a count >= 1")


@dataclass(frozen=True)
class Entry:
    """One migration in the index: its id, when it was created, whether it is final."""

    id: str
    created: float
    final: bool


def to_drop(oldest: Sequence[Entry], total: int, now: float, policy: Retention) -> list[str]:
    """The ids among ``oldest`` (the index's first entries, oldest first, of
    ``total``) whose records the policy no longer keeps; never one in flight."""
    cutoff = now - policy.days * DAY_S
    surplus = total - policy.migrations  # this many of the oldest are beyond the count
    return [
        e.id for rank, e in enumerate(oldest) if e.final and (rank < surplus or e.created < cutoff)
    ]


def may_drop(total: int, oldest_created: float, now: float, policy: Retention) -> bool:
    """Whether an index of ``total`` records whose oldest was created at
    ``oldest_created`` can hold any to drop: the sweep's cheap first look.

    >>> may_drop(10, oldest_created=0.0, now=DAY_S, policy=Retention(days=30, migrations=10))
    False
    >>> may_drop(11, oldest_created=0.0, now=DAY_S, policy=Retention(days=30, migrations=10))
    True
    """
    return total > policy.migrations or oldest_created < now - policy.days * DAY_S


def logs_to_drop(kept_logs: Sequence[str], indexed: Sequence[bool]) -> list[str]:
    """The migrations among ``kept_logs`` (a node's ``logs/<mid>`` dirs) whose
    record is gone from the index (``indexed[i]`` is False): pruned, so their
    CRIU logs go too.

    >>> logs_to_drop(["m-000000000001", "m-000000000002"], [False, True])
    ['m-000000000001']
    """
    return [mid for mid, known in zip(kept_logs, indexed, strict=True) if not known]
