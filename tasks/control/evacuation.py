"""The evacuation runner: drain a node by driving tasks.core.planner, never blocking.

:func:`start` (client side) takes the node's lock, cordons it, plans from the
registry, refuses before anything moves when a container has nowhere to go
(unless partial evacuations are allowed), stores the record (tasks.store.evacuations)
and sends the first ``ferry.control.evacuate_tick``, on the ticks' own queue
(``ferry.control.ticks``: a migration's start never waits behind a tick). Each
tick is I/O glue around the pure :mod:`tasks.core.evacuation`: it reads the
running migrations, the cancel flag and the registry (the drained node's
inventory; of the others only what they have room for), lets ``advance``
decide, and carries out its actions (cancel, submit through
``Cluster.submit``, validated like any other, then store the record where it
changed and unlock or refresh the node's lock). One tick, the turn, sends
itself again ``TICK_S`` later until every container has an outcome; each of
the evacuation's migrations that ends or passes its point of no return asks
for one at once (its options name the evacuation), so the next move starts
without waiting for the turn, and one such tick queued at a time is enough
(tasks.messaging.app.ask_tick). The node stays cordoned; whatever did not
move still runs there.
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from collections.abc import Collection
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from tasks.config.settings import Settings
from tasks.control.cluster import Cluster
from tasks.core.admission import MigrationRequest
from tasks.core.evacplan import Unplaceable, bound_s, compatible, node_of, plan_to_json, specs_of
from tasks.core.evacrecord import EvacState, Evacuation, Outcome, begin, from_dict, to_dict
from tasks.core.evacuation import (
    Cancel,
    Observations,
    Submit,
    SubmitResult,
    Unlock,
    advance,
    submitted,
)
from tasks.core.migration import Migration
from tasks.core.nodes import NodeRecord
from tasks.core.planner import Plan, PlanLimits, plan
from tasks.core.strategy import Strategy
from tasks.messaging.app import EVACUATE_TICK, TICK_QUEUE, ask_tick
from tasks.store.evacuations import Records
from tasks.store.migrations import Store
from workers.errors import BadRequest, CorruptRecord, FerryError, NodeUnavailable, UnknownNode
from workers.ids import check_evac_id, check_node_name, new_evac_id

if TYPE_CHECKING:
    from celery import Celery, Task

TICK_TASK = EVACUATE_TICK
# A migration that ends asks for a tick at once (tasks.messaging.app.tell_evacuation);
# the turn is for the rest: the deadline, a cancel, a destination that died.
TICK_S = 1.0


def start(
    client: Cluster,
    node: str,
    *,
    to: Collection[str] | None = None,
    dry_run: bool = False,
    limits: PlanLimits | None = None,
    bandwidth_bps: float | None = None,
    strategy: str = "auto",
    timeout: float | None = None,
    allow_partial: bool = False,
) -> tuple[str | None, dict[str, Any]]:
    """Plan the evacuation of ``node``; unless ``dry_run``, cordon it and start moving.

    Returns the evacuation id (None for a dry run) and the plan preview;
    raises Unplaceable when a container has no destination and
    ``allow_partial`` is False.
    """
    check_node_name(node)
    limits = limits or PlanLimits()
    Strategy.parse(strategy)
    if timeout is not None and not 0 < timeout < float("inf"):  # NaN too
        raise BadRequest(f"timeout must be > 0 s and finite, not {timeout}")
    known = [n.name for n in client.nodes(())]
    targets = None if to is None else {check_node_name(n) for n in to}
    for n in sorted(targets or ()):
        if n not in known:
            raise UnknownNode(n, known)
    if targets is not None and (not targets or node in targets):
        raise BadRequest(f"--to must name nodes other than {node}")
    client.node(node)  # registered and answering: its containers are checkpointed there
    if dry_run:
        return None, _preview(client, _plan(client, node, targets, limits, strategy), limits, True)
    if not client.store.coordinator_alive():
        raise NodeUnavailable("no coordinator is running: start `ferry coordinator`")
    eid, recs, now = new_evac_id(), client.store.evacuations, time.time()
    holder = recs.lock(node, eid)
    if holder:
        raise BadRequest(
            f"{node} is being evacuated already by {holder}: wait for it, "
            f"or `ferry evacuate --cancel {holder}`"
        )
    drained = client.store.node(node)
    was_cordoned = drained is not None and drained.cordoned
    try:
        client.store.cordon(node, True)  # first, so nothing lands there while we plan
        p = _plan(client, node, targets, limits, strategy)
        preview = _preview(client, p, limits, False)
        if p.unplaceable and not allow_partial:
            raise Unplaceable(preview)
        sizes = {
            c.name: c.memory_bytes for c in specs_of(client.store.node(node) or NodeRecord(node))
        }
        deadline = now + timeout if timeout else None
        ev = begin(
            eid,
            node,
            p,
            link_bps=preview["link_bps"],
            now=now,
            to=targets,
            strategy=strategy,
            bandwidth_bps=bandwidth_bps,
            limits=limits,
            deadline=deadline,
            sizes=sizes,
            preview=preview,
        )
        recs.put(to_dict(ev))
        client.app.send_task(TICK_TASK, args=(eid,), kwargs={"turn": True}, queue=TICK_QUEUE)
    except BaseException:
        recs.delete(eid)
        recs.unlock(node, eid)
        if not was_cordoned:
            client.store.cordon(node, False)
        raise
    return eid, preview


def _plan(
    client: Cluster, node: str, targets: Collection[str] | None, limits: PlanLimits, strategy: str
) -> Plan:
    records = {n.name: n for n in client.nodes({node})}
    drain = records[node]
    others = [node_of(r) for name, r in records.items() if name != node]
    return plan(
        node_of(drain), others, specs_of(drain), limits, compatible(records, targets, strategy)
    )


def _preview(client: Cluster, p: Plan, limits: PlanLimits, dry_run: bool) -> dict[str, Any]:
    link = client.fastest_link_from(p.drain.name)  # measured, else configured
    return {
        "node": p.drain.name,
        "dry_run": dry_run,
        **plan_to_json(p),
        "limits": asdict(limits),
        "link_bps": link,
        "lower_bound_s": round(bound_s(p, link, client.measured_links()), 3),
    }


def tick(client: Cluster, eid: str, turn: bool = False) -> dict[str, Any]:
    """Advance evacuation ``eid`` once; the ``turn`` sends itself again unless it is over."""
    recs = client.store.evacuations
    if not turn:
        recs.took_tick(eid)  # from now on, a migration that ends asks for another
    if not recs.hold_tick(eid):  # the tick that holds it runs once more when it is done
        if turn:
            _next_turn(client, eid)
        return {"evacuation": eid, "busy": "another tick runs"}
    again = False
    try:
        ev = from_dict(recs.get(eid))
        again = ev.state is EvacState.RUNNING  # a tick that fails half-way is followed by another
        if again:
            ev = _run(client, recs, ev, time.time())
            again = ev.state is EvacState.RUNNING
    finally:
        asked = recs.release_tick(eid)
        if again and asked:  # a migration ended while this tick ran: at once
            ask_tick(client.app, recs, eid)
        if again and turn:
            _next_turn(client, eid)
    counts = Counter(mv.outcome.value for mv in ev.moves.values())
    return {"evacuation": eid, "node": ev.node, "state": ev.state.value, **counts}


def _next_turn(client: Cluster, eid: str) -> None:
    client.app.send_task(
        TICK_TASK, args=(eid,), kwargs={"turn": True}, queue=TICK_QUEUE, countdown=TICK_S
    )


def _observe(client: Cluster, recs: Records, ev: Evacuation) -> Observations:
    """What the core decides on: the running migrations, the cancel flag, the registry."""
    migrations: dict[str, Migration | None] = {}
    for mv in ev.moves.values():
        if mv.outcome is Outcome.RUNNING and mv.migration is not None:
            try:
                migrations[mv.migration] = client.status(mv.migration)
            except (BadRequest, CorruptRecord):
                migrations[mv.migration] = None  # its record is gone, or unreadable
    nodes = {n.name: n for n in client.nodes({ev.node})}  # the others: their usage only
    # the report's bound needs them: read once the evacuation may end (no move pending)
    ending = not any(mv.outcome is Outcome.PENDING for mv in ev.moves.values())
    links = client.measured_links() if ending else {}
    return Observations(migrations, recs.cancelled(ev.id), nodes, links)


def _run(client: Cluster, recs: Records, ev: Evacuation, now: float) -> Evacuation:
    """Carry out what :func:`tasks.core.evacuation.advance` asks, in order; the record is stored."""
    obs, was = _observe(client, recs, ev), ev
    ev, todo = advance(ev, obs, now)
    while todo:
        action, *todo = todo
        if isinstance(action, Cancel):
            with contextlib.suppress(FerryError):  # past its point of no return, or just over
                client.cancel(action.migration)
        elif isinstance(action, Submit):
            result: SubmitResult
            try:
                result = client.submit(
                    MigrationRequest(
                        action.container,
                        action.dst,
                        action.strategy,
                        bandwidth_bps=action.bandwidth_bps,
                        evacuation=ev.id,
                    ),
                    seen_on=ev.node,
                    here=True,  # a tick runs in the coordinator: no hop through ferry.control
                )
            except FerryError as exc:
                result = exc
            ev, todo = submitted(ev, obs, action, result, now)
            if isinstance(result, str):
                recs.put(to_dict(ev))  # saved at once: a container is never submitted twice
                was = ev
        else:
            if ev != was:  # most turns change nothing: the record is not written again
                recs.put(to_dict(ev))
            if isinstance(action, Unlock):
                recs.unlock(action.node, action.evacuation)
            else:
                recs.refresh(action.node, action.evacuation)
    return ev


def register(app: Celery, store: Store, settings: Settings | None = None) -> None:
    """Register ``ferry.control.evacuate_tick`` on ``app`` (the coordinator's)."""
    clients: list[Cluster] = []

    # many a second: the record is the result; the backend gets only failures
    @app.task(name=TICK_TASK, bind=True, ignore_result=True, store_errors_even_if_ignored=True)
    def evacuate_tick(self: Task, eid: str, turn: bool = False) -> dict[str, Any]:
        """Advance evacuation ``eid`` once; its turn sends itself again until every container
        is done."""
        if not clients:
            clients.append(Cluster(settings, store=store, app=app))
        return tick(clients[0], check_evac_id(eid), turn is True)
