"""The evacuation runner's decisions: one tick's observations in, the next record and actions out.

Pure: an :class:`Evacuation` and what the tick read (:class:`Observations`:
the running moves' migration records, the cancel flag, the node registry) in;
the updated evacuation and the :data:`Action` list the tick carries out, in
order. No Redis, no Celery, no clock: ``now`` is passed in.

Every action list ends with one :class:`Unlock` (the evacuation is over: its
report is set) or :class:`Refresh`. A :class:`Submit`'s result (the
migration id, or the FerryError ``Cluster.submit`` raised) goes back through
:func:`submitted`, whose actions replace the ones left: the record is saved
after each successful submit, so a container is never submitted twice.

The rules, each as the runner has always applied them:

- a migration that ended gives its move an outcome (DONE: ``moved``); one
  that failed outside SOURCE_PHASES is blamed on its destination, and the
  STRIKES-th blame excludes it: the moves pending to it are placed again;
- a cancel stops the evacuation (``cancelled``); the deadline stops it
  (``timed_out``) and cancels the migrations still running;
- once stopped, pending moves are ``not_started``; a source that stopped
  answering fails them; otherwise the next moves the limits allow start
  (a destination that left, died or was cordoned is excluded first);
- on submit, CapabilityError excludes the destination, TransientError keeps
  the move pending until the next tick, another FerryError fails it.

Worked example: one container, ``web``, leaves n1 for n2::

    >>> from tasks.core.evacrecord import begin
    >>> from tasks.core.planner import Move, Node, Plan
    >>> p = Plan(Node("n1", "x86_64", 1 << 30, 0), (Move("web", "n1", "n2", 0, 1 << 20),), (), 0.1)
    >>> ev = begin("e-1", "n1", p, link_bps=1e8, now=10.0)
    >>> from tasks.core.nodes import NodeRecord
    >>> from workers.records import ContainerInfo
    >>> nodes = {"n1": NodeRecord("n1", alive=True, containers=(ContainerInfo("web"),)),
    ...          "n2": NodeRecord("n2", alive=True)}
    >>> obs = Observations({}, cancel_asked=False, nodes=nodes)
    >>> ev, actions = advance(ev, obs, now=11.0)
    >>> [type(a).__name__ for a in actions], actions[0].dst
    (['Submit', 'Refresh'], 'n2')
    >>> ev, actions = submitted(ev, obs, actions[0], "m-1", now=11.0)
    >>> ev.moves["web"].outcome.value, [type(a).__name__ for a in actions]
    ('running', ['Refresh'])
    >>> m = Migration("m-1", "web", "n1", "n2", state=State.DONE)
    >>> ev, actions = advance(ev, Observations({"m-1": m}, False, nodes), now=12.0)
    >>> ev.moves["web"].outcome.value, ev.state.value, actions
    ('moved', 'done', [Unlock(node='n1', evacuation='e-1')])
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

from tasks.core.evacplan import compatible, live, node_of, report
from tasks.core.evacrecord import EvacState, Evacuation, MoveState, Outcome, Stop, to_dict
from tasks.core.migration import Migration, Phase, State, phases
from tasks.core.nodes import NodeRecord
from tasks.core.planner import next_moves, replan
from tasks.core.summary import summary
from workers.errors import CapabilityError, FerryError, TransientError

SOURCE_PHASES = (Phase.PRECOPY, Phase.DUMP, Phase.CLEANUP)  # failing there: not the destination
STRIKES = 2  # failed migrations blamed on a destination before it takes no more moves
ENDED = {
    State.DONE: Outcome.MOVED,
    State.ROLLED_BACK: Outcome.ROLLED_BACK,
    State.FAILED: Outcome.FAILED,  # its rollback failed: the migration record says where it is
}


@dataclass(frozen=True)
class Observations:
    """What one tick read before deciding."""

    migrations: Mapping[str, Migration | None]  # running moves' records by id; None: gone
    cancel_asked: bool
    nodes: Mapping[str, NodeRecord]  # registry records by name, with ``alive``


@dataclass(frozen=True)
class Cancel:
    """Roll ``migration`` back if it still can be (it may be past its point of no return)."""

    migration: str


@dataclass(frozen=True)
class Submit:
    """Start the migration of ``container`` to ``dst``; its result goes to :func:`submitted`."""

    container: str
    dst: str
    strategy: str
    bandwidth_bps: float | None


@dataclass(frozen=True)
class Unlock:
    """Store the record, then release ``node``'s evacuation lock: the evacuation is over."""

    node: str
    evacuation: str


@dataclass(frozen=True)
class Refresh:
    """Store the record, and keep ``node``'s evacuation lock for another tick."""

    node: str
    evacuation: str


Action = Cancel | Submit | Unlock | Refresh
SubmitResult = str | FerryError  # the migration id, or why Cluster.submit refused


def advance(ev: Evacuation, obs: Observations, now: float) -> tuple[Evacuation, list[Action]]:
    """One tick: follow the migrations, stop or start moves, finish once each has an outcome.

    An evacuation that is over changes no more and asks for nothing.
    """
    if ev.state is not EvacState.RUNNING:
        return ev, []
    ev, blamed = _follow(ev, obs.migrations, now)
    actions: list[Action] = []
    if ev.stop is None:
        if obs.cancel_asked:
            ev = replace(ev, stop=Stop.CANCELLED)
        elif ev.deadline is not None and now >= ev.deadline:
            ev = replace(ev, stop=Stop.TIMED_OUT)
            # roll back what still can; the rest (past its point of no return) finishes
            actions += [Cancel(mv.migration) for mv in _running(ev) if mv.migration]
    for dst in blamed:  # one failure may be the container's; STRIKES are the node's
        ev = replace(ev, strikes={**ev.strikes, dst: ev.strikes.get(dst, 0) + 1})
        if ev.strikes[dst] == STRIKES:
            ev = _exclude(ev, dst, f"{STRIKES} migrations to it failed", obs.nodes)
    if ev.stop is not None:
        why = ev.stop.value.replace("_", " ")
        ev = _pending_to(ev, Outcome.NOT_STARTED, why)
    else:
        ev, submits = _launch(ev, obs.nodes)
        actions += submits
    ev, end = _settle(ev, now)
    return ev, [*actions, end]


def submitted(
    ev: Evacuation, obs: Observations, submit: Submit, result: SubmitResult, now: float
) -> tuple[Evacuation, list[Action]]:
    """Take ``submit``'s result into ``ev``; the actions that replace the ones left.

    A result for a move no longer pending is stale and changes nothing.
    """
    mv = ev.moves.get(submit.container)
    if mv is None or mv.outcome is not Outcome.PENDING:
        pass
    elif isinstance(result, CapabilityError):  # the destination cannot take it after all
        ev = _exclude(ev, submit.dst, str(result), obs.nodes)
    elif isinstance(result, TransientError):  # stays pending: the next tick tries again
        ev, end = _settle(_put(ev, replace(mv, error=str(result))), now)
        return ev, [end]
    elif isinstance(result, str):
        ev = _put(ev, replace(mv, outcome=Outcome.RUNNING, migration=result, started=now, error=""))
    else:
        ev = _put(ev, replace(mv, outcome=Outcome.FAILED, error=str(result)))
    ev, submits = _launch(ev, obs.nodes)
    ev, end = _settle(ev, now)
    return ev, [*submits, end]


def blames_dst(m: Migration) -> bool:
    """Whether a migration that did not finish failed on its destination or the link."""
    if m.cancelled:
        return False
    order = phases(m.strategy, m.lazy, bool(m.sync))
    failed = next((ph for ph in order if ph.value not in m.results), None)
    return failed is not None and failed not in SOURCE_PHASES


def dst_refusal(rec: NodeRecord | None) -> str | None:
    """Why a planned destination takes no more moves now (its registry record), or None."""
    if rec is None:
        return "it left the registry"
    if not rec.alive:
        return "it is not answering"
    return "it was cordoned" if rec.cordoned else None


def _put(ev: Evacuation, mv: MoveState) -> Evacuation:
    return replace(ev, moves={**ev.moves, mv.container: mv})


def _running(ev: Evacuation) -> list[MoveState]:
    return [mv for mv in ev.moves.values() if mv.outcome is Outcome.RUNNING]


def _pending_to(ev: Evacuation, outcome: Outcome, error: str) -> Evacuation:
    for mv in ev.moves.values():
        if mv.outcome is Outcome.PENDING:
            ev = _put(ev, replace(mv, outcome=outcome, error=error))
    return ev


def _follow(
    ev: Evacuation, migrations: Mapping[str, Migration | None], now: float
) -> tuple[Evacuation, list[str]]:
    """Record the outcome of each migration that ended; the destinations to blame."""
    blamed = []
    for mv in _running(ev):
        if mv.migration is None or mv.migration not in migrations:
            continue  # not read this time
        m = migrations[mv.migration]
        if m is None:
            ev = _put(ev, replace(mv, outcome=Outcome.FAILED, error="its migration record is gone"))
            continue
        if not m.state.final:
            continue
        error = "" if m.state is State.DONE else (m.errors[-1] if m.errors else m.state.value)
        done = replace(mv, outcome=ENDED[m.state], summary=summary(m), finished=now, error=error)
        ev = _put(ev, done)
        if m.state is not State.DONE and mv.dst is not None and blames_dst(m):
            blamed.append(mv.dst)
    return ev, blamed


def _exclude(ev: Evacuation, dst: str, why: str, records: Mapping[str, NodeRecord]) -> Evacuation:
    """Take no more moves to ``dst``; re-place those pending to it, or mark them not placed."""
    ev = replace(ev, excluded={**ev.excluded, dst: why})
    if ev.node not in records:  # nothing to plan from: _launch fails the pending moves next
        return ev
    new = replan(
        ev.plan,
        dst,
        [node_of(r) for n, r in records.items() if n not in ev.excluded],
        running=[mv.container for mv in _running(ev)],
        done=[c for c, mv in ev.moves.items() if mv.outcome.final],
        compatible=compatible(records, ev.to, ev.strategy),
    )
    for m in new.moves:
        if ev.moves[m.container].outcome is Outcome.PENDING:
            ev = _put(ev, replace(ev.moves[m.container], dst=m.dst))
    for c, reason in new.unplaceable:
        if ev.moves[c].outcome is Outcome.PENDING:
            mv = replace(ev.moves[c], outcome=Outcome.NOT_PLACED, dst=None, error=reason)
            ev = _put(ev, mv)
    return replace(ev, plan=new)


def _launch(ev: Evacuation, records: Mapping[str, NodeRecord]) -> tuple[Evacuation, list[Submit]]:
    """The next moves the limits allow, as Submits; moves whose container left are gone."""
    src = records.get(ev.node)
    if src is None or not src.alive:
        return _pending_to(ev, Outcome.FAILED, f"{ev.node} is not answering"), []
    here = {c.name for c in live(src)}
    while True:
        running = [m for m in ev.plan.moves if ev.moves[m.container].outcome is Outcome.RUNNING]
        done = {c for c, mv in ev.moves.items() if mv.outcome.final}
        batch = next_moves(ev.plan, running, done, ev.limits)
        submits: list[Submit] = []
        for m in batch:
            if m.container not in here:
                why = f"no longer on {ev.node} (moved or exited)"
                ev = _put(ev, replace(ev.moves[m.container], outcome=Outcome.GONE, error=why))
                continue
            refusal = dst_refusal(records.get(m.dst))
            if refusal is not None:
                ev = _exclude(ev, m.dst, refusal, records)
                break  # placed again: the next batch is another one
            submits.append(Submit(m.container, m.dst, ev.strategy, ev.bandwidth_bps))
        else:
            if submits or not batch:
                return ev, submits
            # every move of this batch was gone: they freed their slots


def _settle(ev: Evacuation, now: float) -> tuple[Evacuation, Unlock | Refresh]:
    """Finish ``ev`` once every move has an outcome (report, unlock); else keep its lock."""
    if not all(mv.outcome.final for mv in ev.moves.values()):
        return ev, Refresh(ev.node, ev.id)
    state = EvacState.DONE if ev.stop is None else EvacState(ev.stop.value)
    ev = replace(ev, state=state, finished=now)
    return replace(ev, report=report(to_dict(ev))), Unlock(ev.node, ev.id)
