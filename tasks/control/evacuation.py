"""The evacuation runner: drain a node by driving tasks.core.planner, never blocking.

:func:`start` (client side) takes the node's lock, cordons it, plans from the
registry, refuses before anything moves when a container has nowhere to go
(unless partial evacuations are allowed), stores the record (tasks.store.evacuations)
and sends the first ``ferry.control.evacuate_tick``. Each tick follows its
migrations, starts the next moves the limits allow through ``Cluster.submit``
(validated like any other), re-plans moves pending to a destination that failed
or filled, and sends itself again ``TICK_S`` later until every container has an
outcome. The node stays cordoned; whatever did not move still runs there.
"""

from __future__ import annotations

import contextlib
import secrets
import time
from collections import Counter
from collections.abc import Collection
from dataclasses import asdict
from typing import Any

from celery import Celery, Task

from tasks.config.settings import Settings
from tasks.control.cluster import Cluster
from tasks.core.evacplan import (
    OUTCOMES,
    PENDING,
    RUNNING,
    Unplaceable,
    bound_s,
    compatible,
    live,
    node_of,
    plan_from_json,
    plan_to_json,
    report,
    specs_of,
)
from tasks.core.machine import Migration, Phase, State, phases
from tasks.core.planner import Plan, PlanLimits, next_moves, plan, replan
from tasks.core.strategy import STRATEGIES
from tasks.core.summary import summary
from tasks.messaging.app import CONTROL_QUEUE
from tasks.store.evacuations import Records
from tasks.store.migrations import Store
from workers.errors import (
    BadRequest,
    CapabilityError,
    FerryError,
    NodeUnavailable,
    TransientError,
    UnknownNode,
)
from workers.ids import check_evac_id, check_node_name

TICK_TASK = "ferry.control.evacuate_tick"
TICK_S = 0.25  # how soon a finished move is followed by the next: ticks cost a few ms
OUTCOME = {State.DONE: "moved", State.ROLLED_BACK: "rolled_back", State.FAILED: "failed"}
SOURCE_PHASES = (Phase.PRECOPY, Phase.DUMP, Phase.CLEANUP)  # failing there: not the destination
STRIKES = 2  # failed migrations blamed on a destination before it takes no more moves


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
    if strategy not in STRATEGIES:
        raise BadRequest(f"unknown strategy {strategy!r}: use one of {', '.join(STRATEGIES)}")
    if timeout is not None and not 0 < timeout < float("inf"):  # NaN too
        raise BadRequest(f"timeout must be > 0 s and finite, not {timeout}")
    known = [n["name"] for n in client.nodes()]
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
    eid, recs, now = "e-" + secrets.token_hex(6), Records(client.store.r), time.time()
    holder = recs.lock(node, eid)
    if holder:
        raise BadRequest(
            f"{node} is being evacuated already by {holder}: wait for it, "
            f"or `ferry evacuate --cancel {holder}`"
        )
    was_cordoned = bool((client.store.node(node) or {}).get("cordoned"))
    try:
        client.store.cordon(node, True)  # first, so nothing lands there while we plan
        p = _plan(client, node, targets, limits, strategy)
        preview = _preview(client, p, limits, False)
        if p.unplaceable and not allow_partial:
            raise Unplaceable(preview)
        sizes = {c.name: c.memory_bytes for c in specs_of(client.store.node(node) or {})}
        moves = {
            m.container: {
                "dst": m.dst,
                "order": m.order,
                "memory_bytes": m.memory_bytes,
                "outcome": PENDING,
                "migration": None,
                "error": "",
            }
            for m in p.moves
        }
        for i, (c, why) in enumerate(p.unplaceable):
            moves[c] = {
                "dst": None,
                "order": len(p.moves) + i,
                "memory_bytes": sizes.get(c, 0),
                "outcome": "not_placed",
                "migration": None,
                "error": why,
            }
        rec = {
            "id": eid,
            "node": node,
            "to": sorted(targets) if targets else None,
            "strategy": strategy,
            "bandwidth_bps": bandwidth_bps,
            "limits": asdict(limits),
            "link_bps": client.settings.link_bps,
            "state": "running",
            "stop": None,
            "deadline": now + timeout if timeout else None,
            "plan": plan_to_json(p),
            "excluded": {},
            "strikes": {},
            "moves": moves,
            "preview": preview,
            "started": now,
            "finished": None,
            "report": None,
        }
        recs.put(rec)
        client.app.send_task(TICK_TASK, args=(eid,), queue=CONTROL_QUEUE)
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
    records = {n["name"]: n for n in client.nodes()}
    drain = records[node]
    others = [node_of(r) for name, r in records.items() if name != node]
    return plan(
        node_of(drain), others, specs_of(drain), limits, compatible(records, targets, strategy)
    )


def _preview(client: Cluster, p: Plan, limits: PlanLimits, dry_run: bool) -> dict[str, Any]:
    return {
        "node": p.drain.name,
        "dry_run": dry_run,
        **plan_to_json(p),
        "limits": asdict(limits),
        "link_bps": client.settings.link_bps,
        "lower_bound_s": round(bound_s(p, client.settings.link_bps), 3),
    }


def tick(client: Cluster, eid: str) -> dict[str, Any]:
    """Advance evacuation ``eid`` once, and send the next tick unless it is over."""
    recs = Records(client.store.r)
    if not recs.hold_tick(eid):
        return {"evacuation": eid, "busy": "another tick runs"}
    again = False
    try:
        rec = recs.get(eid)
        again = rec["state"] == "running"  # a tick that fails half-way is followed by another
        if again:
            _advance(client, recs, rec, time.time())
            recs.put(rec)
            again = rec["state"] == "running"
    finally:
        recs.release_tick(eid)
        if again:
            client.app.send_task(TICK_TASK, args=(eid,), queue=CONTROL_QUEUE, countdown=TICK_S)
    counts = Counter(mv["outcome"] for mv in rec["moves"].values())
    return {"evacuation": eid, "node": rec["node"], "state": rec["state"], **counts}


def _advance(client: Cluster, recs: Records, rec: dict[str, Any], now: float) -> None:
    moves = rec["moves"]
    p = plan_from_json(rec["plan"])
    failed_dsts = _follow(client, moves, now)
    if rec["stop"] is None:
        if recs.cancelled(rec["id"]):
            rec["stop"] = "cancelled"
        elif rec["deadline"] is not None and now >= rec["deadline"]:
            rec["stop"] = "timed_out"
            for mv in moves.values():  # roll back what still can; the rest finishes
                if mv["outcome"] == RUNNING:
                    with contextlib.suppress(
                        FerryError
                    ):  # past its point of no return, or just over
                        client.cancel(mv["migration"])
    records = {n["name"]: n for n in client.nodes()}
    for dst in failed_dsts:  # one failure may be the container's; STRIKES are the node's
        rec["strikes"][dst] = rec["strikes"].get(dst, 0) + 1
        if rec["strikes"][dst] == STRIKES:
            p = _replan(rec, p, dst, f"{STRIKES} migrations to it failed", records)
    if rec["stop"]:
        for mv in moves.values():
            if mv["outcome"] == PENDING:
                mv.update(outcome="not_started", error=rec["stop"].replace("_", " "))
    else:
        p = _start_moves(client, recs, rec, p, records, now)
    rec["plan"] = plan_to_json(p)
    if all(mv["outcome"] in OUTCOMES for mv in moves.values()):
        rec.update(state=rec["stop"] or "done", finished=now)
        rec["report"] = report(rec)
        recs.unlock(rec["node"], rec["id"])
    else:
        recs.refresh(rec["node"], rec["id"])


def _follow(client: Cluster, moves: dict[str, dict[str, Any]], now: float) -> list[str]:
    """Record the outcome of each migration that ended; the destinations to blame."""
    blamed = []
    for mv in moves.values():
        if mv["outcome"] != RUNNING:
            continue
        try:
            m = client.status(mv["migration"])
        except BadRequest:
            mv.update(outcome="failed", error="its migration record is gone")
            continue
        if not m.state.final:
            continue
        error = "" if m.state is State.DONE else (m.errors[-1] if m.errors else m.state.value)
        mv.update(outcome=OUTCOME[m.state], summary=summary(m), finished=now, error=error)
        if m.state is not State.DONE and _blames_dst(m):
            blamed.append(mv["dst"])
    return blamed


def _blames_dst(m: Migration) -> bool:
    """Whether a migration that did not finish failed on its destination or the link."""
    if any("cancelled by request" in e for e in m.errors):
        return False
    order = phases(m.strategy, m.lazy, bool(m.sync))
    failed = next((ph for ph in order if ph.value not in m.results), None)
    return failed is not None and failed not in SOURCE_PHASES


def _replan(
    rec: dict[str, Any], p: Plan, dst: str, why: str, records: dict[str, dict[str, Any]]
) -> Plan:
    """Re-place the moves pending to ``dst``; those left without a place are not placed."""
    moves = rec["moves"]
    rec["excluded"][dst] = why
    nodes = [node_of(r) for n, r in records.items() if n not in rec["excluded"]]
    new = replan(
        p,
        dst,
        nodes,
        running=[c for c, mv in moves.items() if mv["outcome"] == RUNNING],
        done=[c for c, mv in moves.items() if mv["outcome"] in OUTCOMES],
        compatible=compatible(records, rec["to"], rec["strategy"]),
    )
    for m in new.moves:
        if moves[m.container]["outcome"] == PENDING:
            moves[m.container]["dst"] = m.dst
    for c, reason in new.unplaceable:
        if moves[c]["outcome"] == PENDING:
            moves[c].update(outcome="not_placed", dst=None, error=reason)
    return new


def _dst_refusal(rec: dict[str, Any] | None) -> str | None:
    if rec is None:
        return "it left the registry"
    if not rec.get("alive"):
        return "it is not answering"
    return "it was cordoned" if rec.get("cordoned") else None


def _start_moves(
    client: Cluster,
    recs: Records,
    rec: dict[str, Any],
    p: Plan,
    records: dict[str, dict[str, Any]],
    now: float,
) -> Plan:
    moves, drain = rec["moves"], rec["node"]
    src = records.get(drain)
    if src is None or not src.get("alive"):
        for mv in moves.values():
            if mv["outcome"] == PENDING:
                mv.update(outcome="failed", error=f"{drain} is not answering")
        return p
    here = {c["name"] for c in live(src)}
    limits = PlanLimits(**rec["limits"])
    while True:
        running = [m for m in p.moves if moves[m.container]["outcome"] == RUNNING]
        done = {c for c, mv in moves.items() if mv["outcome"] in OUTCOMES}
        batch = next_moves(p, running, done, limits)
        if not batch:
            return p
        for m in batch:
            mv = moves[m.container]
            if m.container not in here:
                mv.update(outcome="gone", error=f"no longer on {drain} (moved or exited)")
                continue
            refusal = _dst_refusal(records.get(m.dst))
            if refusal is None:
                try:
                    mid = client.submit(
                        m.container, m.dst, rec["strategy"], bandwidth_bps=rec["bandwidth_bps"]
                    )
                except CapabilityError as exc:  # the destination cannot take it after all
                    refusal = str(exc)
                except TransientError as exc:
                    mv["error"] = str(exc)  # stays pending: the next tick tries again
                    return p
                except FerryError as exc:
                    mv.update(outcome="failed", error=str(exc))
                    continue
                else:
                    mv.update(outcome=RUNNING, migration=mid, started=now, error="")
                    recs.put(rec)  # saved at once: a container is never submitted twice
                    continue
            p = _replan(rec, p, m.dst, refusal, records)
            break


def register(app: Celery, store: Store, settings: Settings | None = None) -> None:
    """Register ``ferry.control.evacuate_tick`` on ``app`` (the coordinator's)."""
    clients: list[Cluster] = []

    # 4 a second: the record is the result; the backend gets only failures
    @app.task(name=TICK_TASK, bind=True, ignore_result=True, store_errors_even_if_ignored=True)
    def evacuate_tick(self: Task, eid: str) -> dict[str, Any]:
        """Advance evacuation ``eid`` once; it sends itself again until every container is done."""
        if not clients:
            clients.append(Cluster(settings, store=store, app=app))
        return tick(clients[0], check_evac_id(eid))
