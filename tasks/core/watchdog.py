"""Timeouts and lost steps: what the coordinator's sweep does with each record.

Pure: a record, the time and which nodes answer in; an event (or nothing)
out. Two clocks, like Nova and KubeVirt:

- the whole migration may take ``per_gib_s`` per GiB of container memory
  (Nova: 800 s/GiB), at least ``min_total_s``; past it, the migration is
  aborted and rolled back (or, with ``timeout_action = "force"``, a pre-copy
  is pushed to its final dump). The first rsync pass of a container's
  synced directories is not on this clock: its size is not the memory's (a
  big directory over a Pi's link takes minutes), it reports progress every
  few seconds, and rsync gives up after a minute of silence;
- a step that shows no progress for ``progress_s`` (KubeVirt: 150 s), or
  whose node stopped answering for ``node_down_s``, is stalled: its worker
  died or its message was lost, and the phase is sent again (phases are
  idempotent) within the retry budget, then rolled back.

Worked example::

    >>> from tasks.core.machine import Migration, State, Phase
    >>> from tasks.core.options import Options
    >>> m = Migration("m-0123456789ab", "web", "a", "b", state=State.RUNNING,
    ...               phase=Phase.DUMP, step=3, created=0.0, updated=10.0,
    ...               options=Options(memory_bytes=1 << 30))
    >>> check(m, now=100.0, alive={"a": True, "b": True}, t=Timeouts()) is None
    True
    >>> check(m, now=100.0, alive={"a": False, "b": True}, t=Timeouts()).kind
    'stalled'
    >>> check(m, now=900.0, alive={"a": True, "b": True}, t=Timeouts()).kind
    'timeout'
"""

from __future__ import annotations

from dataclasses import dataclass

from tasks.core.migration import ROUTE, Event, Migration, Phase, State


@dataclass(frozen=True)
class Timeouts:
    per_gib_s: float = 800.0
    min_total_s: float = 120.0
    progress_s: float = 150.0
    node_down_s: float = 15.0


def total_limit_s(m: Migration, t: Timeouts) -> float:
    """How long the whole migration may take."""
    gib = m.options.memory_bytes / 2**30
    return max(t.min_total_s, t.per_gib_s * gib)


def check(
    m: Migration,
    now: float,
    alive: dict[str, bool],
    t: Timeouts,
    restarted: dict[str, float] | None = None,
) -> Event | None:
    """The event the sweep should apply to ``m`` now, if any.

    ``alive`` says which nodes answer; ``restarted`` maps "node/main" and
    "node/urgent" to when that worker last (re)started.
    """
    if m.state is State.PENDING:
        # Submitted, but the start was lost (a coordinator died holding it).
        return Event("start", now) if now - m.created > t.node_down_s else None
    if m.state.final or m.phase is None:
        return None
    if m.state is State.RUNNING and not m.past_no_return and m.phase is not Phase.SYNC:
        limit = total_limit_s(m, t)
        spent = now - m.created - float(m.results.get("sync", {}).get("wall_ms", 0.0)) / 1000
        if spent > limit:
            return Event(
                "timeout", now, error=f"timed out after {spent:.0f} s (limit {limit:.0f} s)"
            )
    quiet = now - m.updated
    phases = list(m.rollback) if m.state is State.ROLLING_BACK else [m.phase]
    slots = [
        (p, m.src if ROUTE[p][0] == "src" else m.dst, ROUTE[p][1]) for p in phases if p in ROUTE
    ]
    down = [f"{n} ({p.value})" for p, n, _ in slots if not alive.get(n, False)]
    if down and quiet > t.node_down_s:
        return Event("stalled", now, m.phase, m.step, error=f"{', '.join(down)} stopped answering")
    lost = [
        f"{n}/{'urgent' if u else 'main'} ({p.value})"
        for p, n, u in slots
        if (restarted or {}).get(f"{n}/{'urgent' if u else 'main'}", 0.0) > m.updated
    ]
    if lost:
        return Event("stalled", now, m.phase, m.step, error=f"worker {', '.join(lost)} restarted")
    if quiet > t.progress_s and m.phase is not Phase.FINISHED:
        return Event(
            "stalled",
            now,
            m.phase,
            m.step,
            error=f"no progress in {m.phase.value} for {quiet:.0f} s",
        )
    return None
