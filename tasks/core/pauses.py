"""Every pause a container had: when its tree was frozen, and for how long.

A migration pauses its container more than once: each delta pass is a full
``criu dump --leave-running`` (the tree is frozen while CRIU dumps it), a
pre-copy pass freezes it for its pre-dump, the final dump freezes it until the
restore resumes it on the destination, and a rollback keeps it frozen until
the source resumes it. A post-copy restore runs the container at once but
degraded: every first touch of a page waits for the network until the last
page has arrived, and the runs of such waits the tree had (its stalls, from
the lazy-pages daemon's log) are pauses too.

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
    phase: str  # precopy (a pass), dump (the final freeze until the restore), rollback,
    # fault (post-copy: the tree waited for its pages)
    start: float  # epoch seconds, on the source's clock
    ms: float


STALL_JOIN_S = 0.005  # a stall that starts this soon after the resume continues the final pause


def stalled(pauses: Sequence[Pause], stalls: Sequence[Sequence[float]]) -> tuple[Pause, ...]:
    """``pauses`` with a post-copy tree's waits for its pages, each (start, ms): one
    that began as the tree resumed lengthens the final pause (``dump``), the
    others are pauses of their own (``fault``).

    >>> dump = Pause("dump", 10.0, 200.0)
    >>> [(p.phase, p.ms) for p in stalled([dump], [(10.201, 80.0), (11.0, 30.0)])]
    [('dump', 281.0), ('fault', 30.0)]

    A wait that ended inside the freeze as recorded (the tree resumed a moment
    before the restore step noted its end) never shortens it:

    >>> [(p.phase, p.ms) for p in stalled([dump], [(10.15, 20.0)])]
    [('dump', 200.0)]
    """
    out = list(pauses)
    for start, ms in stalls:
        last = out[-1] if out else None
        if last and last.phase == "dump" and start <= last.start + last.ms / 1000 + STALL_JOIN_S:
            end = float(start) + float(ms) / 1000
            longer = max(last.ms, round((end - last.start) * 1000, 1))
            out[-1] = Pause("dump", last.start, longer)
        else:
            out.append(Pause("fault", float(start), round(float(ms), 1)))
    return tuple(out)


def longest(pauses: Sequence[Pause]) -> Pause | None:
    return max(pauses, key=lambda p: p.ms, default=None)


def total_ms(pauses: Sequence[Pause]) -> float:
    return round(sum(p.ms for p in pauses), 1)
