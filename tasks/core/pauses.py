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

Wait = tuple[float, float]  # start (epoch seconds), ms


@dataclass(frozen=True)
class Pause:
    phase: str  # precopy (a pass), dump (the final freeze until the restore), rollback,
    # fault (post-copy: the tree waited for its pages)
    start: float  # epoch seconds, on the source's clock
    ms: float


# Waits for pages (and the final freeze before them) closer together than this
# are one pause as the workload feels it: in a shorter gap the restored tree
# was at best being woken and scheduled again (on a busy node a woken task
# waits that long for a CPU), so it could not have shown any progress. Measured
# on benchmarks/pauses.py's workload (1 Gbit/s, 1 GiB post-copy), with the
# waits the daemon read late started when the tree was seen waiting
# (workers.criu.faultwatch): the gaps without a tick were 1 to 5.5 ms (the log's
# faults less than 5 ms apart are already one wait), those with one 10 ms or
# more (its sleep), so the window sits between.
JOIN_S = 0.008


def joined(waits: Sequence[Sequence[float]], window_s: float = JOIN_S) -> tuple[Wait, ...]:
    """``waits`` (start, ms), as the pauses a workload feels: the overlapping ones
    as one, and two closer than ``window_s`` as one from the first's start to
    the second's end, if the gap between them is shorter than one of them.

    The second rule keeps a tree that runs between short waits from being
    reported as paused throughout: three waits of 0.2 ms, 4 ms apart, stay
    three, while a gap of 6 ms between waits of 120 and 30 ms is one pause.

    >>> joined([(10.0, 120.0), (10.126, 30.0), (10.2, 0.2), (10.204, 0.2)])
    ((10.0, 156.0), (10.2, 0.2), (10.204, 0.2))
    >>> joined([(10.0, 50.0), (10.02, 40.0)])  # overlapping
    ((10.0, 60.0),)
    """
    out: list[list[float]] = []  # [start, end, the last wait's ms]
    for start, ms in sorted((float(s), float(ms)) for s, ms in waits):
        end = start + ms / 1000
        if out and start <= out[-1][1]:
            out[-1][1] = max(out[-1][1], end)
            out[-1][2] = max(out[-1][2], ms)
        elif (
            out
            and start - out[-1][1] < window_s
            and (start - out[-1][1]) * 1000 < max(out[-1][2], ms)
        ):
            out[-1][1:] = [max(out[-1][1], end), ms]
        else:
            out.append([start, end, ms])
    return tuple((round(s, 6), round((e - s) * 1000, 1)) for s, e, _ in out)


def stalled(pauses: Sequence[Pause], stalls: Sequence[Sequence[float]]) -> tuple[Pause, ...]:
    """``pauses`` with a post-copy tree's waits for its pages, each (start, ms): those
    that :func:`joined` joins to the final freeze (``dump``, the last pause)
    lengthen it, the others are pauses of their own (``fault``).

    >>> dump = Pause("dump", 10.0, 200.0)
    >>> [(p.phase, p.ms) for p in stalled([dump], [(10.204, 80.0), (11.0, 30.0)])]
    [('dump', 284.0), ('fault', 30.0)]

    A wait that ended inside the freeze as recorded (the tree resumed a moment
    before the restore step noted its end) never shortens it:

    >>> [(p.phase, p.ms) for p in stalled([dump], [(10.15, 20.0)])]
    [('dump', 200.0)]
    """
    out = list(pauses)
    if not (out and out[-1].phase == "dump"):
        return (*out, *(Pause("fault", start, ms) for start, ms in joined(stalls)))
    dump = out.pop()  # the earliest wait of all: the tree resumed after it
    first, *rest = joined([(dump.start, dump.ms), *stalls])
    out.append(Pause("dump", dump.start, max(dump.ms, first[1])))
    return (*out, *(Pause("fault", start, ms) for start, ms in rest))


def longest(pauses: Sequence[Pause]) -> Pause | None:
    return max(pauses, key=lambda p: p.ms, default=None)


def total_ms(pauses: Sequence[Pause]) -> float:
    return round(sum(p.ms for p in pauses), 1)
