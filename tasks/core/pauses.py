"""Every pause a container had: when its tree was frozen, and for how long.

A migration pauses its container more than once: each delta pass is a full
``criu dump --leave-running`` (the tree is frozen while CRIU dumps it), a
pre-copy pass freezes it for its pre-dump, the final dump freezes it until the
restore resumes it on the destination, and a rollback keeps it frozen until
the source resumes it. A post-copy restore runs the container at once but
degraded: every first touch of a page waits for the network until the last
page has arrived.

"Downtime" is the longest pause, as the workload feels it; ``paused_total``
adds them all up. Times are on the nodes' clocks (kept in step by NTP).

>>> ps = (Pause("precopy", 10.0, 180.0), Pause("dump", 12.0, 95.0))
>>> longest(ps).phase, total_ms(ps)
('precopy', 275.0)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Pause:
    phase: str  # precopy (a pass), dump (the final freeze until the restore), rollback
    start: float  # epoch seconds, on the source's clock
    ms: float


def longest(pauses: Sequence[Pause]) -> Pause | None:
    return max(pauses, key=lambda p: p.ms, default=None)


def total_ms(pauses: Sequence[Pause]) -> float:
    return round(sum(p.ms for p in pauses), 1)
