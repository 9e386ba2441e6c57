"""The evacuation runner's decisions: a table of ticks, the stored format, then properties."""

from __future__ import annotations

import doctest
import json
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tasks.core.evacuation
from tasks.core.evacplan import OUTCOMES
from tasks.core.evacrecord import (
    EvacState,
    Evacuation,
    MoveState,
    Outcome,
    Stop,
    begin,
    from_dict,
    to_dict,
)
from tasks.core.evacuation import (
    STRIKES,
    Action,
    Cancel,
    Observations,
    Refresh,
    Submit,
    SubmitResult,
    Unlock,
    advance,
    submitted,
)
from tasks.core.migration import Migration, State
from tasks.core.nodes import NodeRecord
from tasks.core.planner import Move, Node, Plan, PlanLimits
from tests.unit.records import node_record
from workers.errors import BadRequest, CapabilityError, FerryError, NodeUnavailable
from workers.records import Capabilities

G, M = 1 << 30, 1 << 20
SIZES = {"c1": 1 * M, "c2": 2 * M, "c3": 3 * M, "c4": 4 * M}
PLANNED = {"c1": "b", "c2": "c", "c3": "b", "c4": "c"}
PLAN = Plan(
    Node("a", "x86_64", 8 * G, 8 * G),
    tuple(Move(n, "a", PLANNED[n], i, SIZES[n]) for i, n in enumerate(SIZES)),
    (),
    0.1,
)
NOW = 100.0
# a cold migration's results up to (not including) the phase it failed in
UP_TO = {
    "dump": ("prepare",),  # a source phase: not the destination's fault
    "restore": ("prepare", "dump", "transfer"),  # a destination phase
}


# what a sim node publishes (workers.runtimes.sim.SimRuntime.capabilities), with memory
SIM = Capabilities(
    "x86_64",
    criu_ok=True,
    soft_dirty=True,
    lazy_pages=True,
    simulated=True,
    facts={"mem_total_bytes": 8 * G, "mem_free_bytes": 8 * G},
)


def node(name: str, *, alive: bool = True, cordoned: bool = False, has: Any = ()) -> NodeRecord:
    return node_record(
        {
            "name": name,
            "alive": alive,
            "cordoned": cordoned,
            "state": "up",
            "runtime": "sim",
            "probe": SIM.record(),
            "containers": [{"name": c, "memory_bytes": SIZES[c]} for c in has],
        }
    )


def registry(**flags: dict[str, Any]) -> dict[str, NodeRecord]:
    """The drained node ``a`` (running c1..c4) and destinations b, c and d; ``flags`` per node."""
    kw: dict[str, dict[str, Any]] = {"a": {"has": tuple(SIZES)}}
    for n, f in flags.items():
        kw[n] = {**kw.get(n, {}), **f}
    return {n: node(n, **kw.get(n, {})) for n in "abcd"}


def evacuation(running: Mapping[str, str] | None = None, **kw: Any) -> Evacuation:
    """c1..c4 pending on the plan above; ``running``: container -> migration id."""
    limits = PlanLimits(max_parallel=2, per_node=2)
    ev = begin("e-1", "a", PLAN, link_bps=1e8, now=NOW - 10, strategy="cold", limits=limits)
    for c, mid in (running or {}).items():
        mv = replace(ev.moves[c], outcome=Outcome.RUNNING, migration=mid, started=NOW - 5)
        ev = replace(ev, moves={**ev.moves, c: mv})
    return replace(ev, **kw)


def mig(
    mid: str, c: str, state: State, failed_in: str = "", errors: tuple[str, ...] = ()
) -> Migration:
    results = {p: {} for p in UP_TO.get(failed_in, ())}
    if state is not State.DONE and not errors:
        errors = (f"{failed_in or 'it'} failed",)
    return Migration(mid, c, "a", PLANNED[c], state=state, errors=errors, results=results)  # type: ignore[arg-type]


def ok(s: Submit) -> SubmitResult:
    return f"m-{s.container}"


def tick(
    ev: Evacuation,
    obs: Observations,
    now: float = NOW,
    results: Callable[[Submit], SubmitResult] = ok,
) -> tuple[Evacuation, list[Action]]:
    """Run one tick as tasks.control.evacuation does; every action it carried out."""
    ev, todo = advance(ev, obs, now)
    done: list[Action] = []
    while todo:
        assert isinstance(todo[-1], Unlock | Refresh)
        assert not any(isinstance(a, Unlock | Refresh) for a in todo[:-1]), todo
        action, *todo = todo
        done.append(action)
        if isinstance(action, Submit):
            assert ev.moves[action.container].outcome is Outcome.PENDING, action
            assert action.dst not in ev.excluded, (action, ev.excluded)
            ev, todo = submitted(ev, obs, action, results(action), now)
    return ev, done


def outcomes(ev: Evacuation) -> dict[str, str]:
    return {c: mv.outcome.value for c, mv in ev.moves.items()}


# (id, evacuation, migrations read, cancel asked, registry, {(container, dst): refusal},
#  outcomes after the tick, what else holds)
TICKS = [
    (
        "a finished migration's move is moved; the freed slot starts the next",
        evacuation({"c1": "m1", "c2": "m2"}),
        {"m1": mig("m1", "c1", State.DONE), "m2": mig("m2", "c2", State.RUNNING)},
        False,
        registry(),
        {},
        {"c1": "moved", "c2": "running", "c3": "running", "c4": "pending"},
        lambda ev, acts: ev.moves["c1"].summary is not None and ev.moves["c1"].finished == NOW,
    ),
    (
        "a migration past its point of no return (cleaning up) frees its slot: the next starts",
        evacuation({"c1": "m1", "c2": "m2"}),
        {
            "m1": replace(mig("m1", "c1", State.RUNNING), past_no_return=True),
            "m2": mig("m2", "c2", State.RUNNING),
        },
        False,
        registry(),
        {},
        {"c1": "running", "c2": "running", "c3": "running", "c4": "pending"},
        lambda ev, acts: [a.container for a in acts if isinstance(a, Submit)] == ["c3"],
    ),
    (
        f"rolled back on the destination a {STRIKES}nd time: excluded, pending moves replanned",
        evacuation({"c1": "m1"}, strikes={"b": STRIKES - 1}),
        {"m1": mig("m1", "c1", State.ROLLED_BACK, "restore")},
        False,
        registry(),
        {},
        {"c1": "rolled_back", "c2": "running", "c3": "running", "c4": "pending"},
        lambda ev, acts: (
            "b" in ev.excluded
            and ev.moves["c3"].dst != "b"
            and all(a.dst != "b" for a in acts if isinstance(a, Submit))
        ),
    ),
    (
        "rolled back in a source phase: no strike on the destination",
        evacuation({"c1": "m1"}, strikes={"b": STRIKES - 1}),
        {"m1": mig("m1", "c1", State.ROLLED_BACK, "dump")},
        False,
        registry(),
        {},
        {"c1": "rolled_back", "c2": "running", "c3": "running", "c4": "pending"},
        lambda ev, acts: ev.strikes == {"b": STRIKES - 1} and not ev.excluded,
    ),
    (
        "rolled back by a cancel: no strike",
        evacuation({"c1": "m1"}),
        {"m1": replace(mig("m1", "c1", State.ROLLED_BACK, "restore"), cancelled=True)},
        False,
        registry(),
        {},
        {"c1": "rolled_back", "c2": "running", "c3": "running", "c4": "pending"},
        lambda ev, acts: ev.strikes == {},
    ),
    (
        "a migration record that is gone fails its move",
        evacuation({"c1": "m1"}),
        {"m1": None},
        False,
        registry(),
        {},
        {"c1": "failed", "c2": "running", "c3": "running", "c4": "pending"},
        lambda ev, acts: ev.moves["c1"].error == "its migration record is gone",
    ),
    (
        "a cancel: pending moves are not started, the running one goes on",
        evacuation({"c1": "m1"}),
        {"m1": mig("m1", "c1", State.RUNNING)},
        True,
        registry(),
        {},
        {"c1": "running", "c2": "not_started", "c3": "not_started", "c4": "not_started"},
        lambda ev, acts: (
            ev.stop is Stop.CANCELLED
            and ev.state is EvacState.RUNNING
            and acts == [Refresh("a", "e-1")]
        ),
    ),
    (
        "a cancel with nothing running ends it: report, unlock",
        evacuation(),
        {},
        True,
        registry(),
        {},
        {"c1": "not_started", "c2": "not_started", "c3": "not_started", "c4": "not_started"},
        lambda ev, acts: (
            ev.state is EvacState.CANCELLED
            and ev.report is not None
            and ev.report["counts"]["not_started"] == 4
            and acts == [Unlock("a", "e-1")]
        ),
    ),
    (
        "the deadline: cancel the running migrations, start nothing more",
        evacuation({"c1": "m1", "c2": "m2"}, deadline=NOW),
        {"m1": mig("m1", "c1", State.RUNNING), "m2": mig("m2", "c2", State.RUNNING)},
        False,
        registry(),
        {},
        {"c1": "running", "c2": "running", "c3": "not_started", "c4": "not_started"},
        lambda ev, acts: (
            ev.stop is Stop.TIMED_OUT
            and acts == [Cancel("m1"), Cancel("m2"), Refresh("a", "e-1")]
            and ev.moves["c3"].error == "timed out"
        ),
    ),
    (
        "a source that stopped answering fails the pending moves",
        evacuation({"c1": "m1"}),
        {"m1": mig("m1", "c1", State.RUNNING)},
        False,
        registry(a={"alive": False}),
        {},
        {"c1": "running", "c2": "failed", "c3": "failed", "c4": "failed"},
        lambda ev, acts: ev.moves["c2"].error == "a is not answering",
    ),
    (
        "a strike while the source left the registry: excluded, and pending moves fail",
        evacuation({"c1": "m1"}, strikes={"b": STRIKES - 1}),
        {"m1": mig("m1", "c1", State.ROLLED_BACK, "restore")},
        False,
        {n: r for n, r in registry().items() if n != "a"},
        {},
        {"c1": "rolled_back", "c2": "failed", "c3": "failed", "c4": "failed"},
        lambda ev, acts: "b" in ev.excluded and acts == [Unlock("a", "e-1")],
    ),
    (
        "a container no longer on the source is gone; the next one starts",
        evacuation(),
        {},
        False,
        registry(a={"has": ("c2", "c3", "c4")}),
        {},
        {"c1": "gone", "c2": "running", "c3": "running", "c4": "pending"},
        lambda ev, acts: "no longer on a" in ev.moves["c1"].error,
    ),
    (
        "a destination cordoned meanwhile is excluded before anything is sent to it",
        evacuation(),
        {},
        False,
        registry(b={"cordoned": True}),
        {},
        {"c1": "running", "c2": "running", "c3": "pending", "c4": "pending"},
        lambda ev, acts: (
            ev.excluded == {"b": "it was cordoned"}
            and all(mv.dst != "b" for mv in ev.moves.values())
        ),
    ),
    (
        "a submit refused with CapabilityError: its destination is excluded, the move replanned",
        evacuation(),
        {},
        False,
        registry(),
        {("c1", "b"): CapabilityError("b cannot run cold")},
        {"c1": "running", "c2": "running", "c3": "pending", "c4": "pending"},
        lambda ev, acts: (
            ev.excluded == {"b": "b cannot run cold"}
            and ev.moves["c1"].dst not in (None, "b")
            and [a.dst for a in acts if isinstance(a, Submit)].count("b") == 1
        ),
    ),
    (
        "a submit that failed transiently stays pending and ends the tick's submits",
        evacuation(),
        {},
        False,
        registry(),
        {("c1", "b"): NodeUnavailable("b is busy")},
        {"c1": "pending", "c2": "pending", "c3": "pending", "c4": "pending"},
        lambda ev, acts: (
            ev.moves["c1"].error == "b is busy"
            and acts == [Submit("c1", "b", "cold", None), Refresh("a", "e-1")]
        ),
    ),
    (
        "a submit refused otherwise fails its move; the others go on",
        evacuation(),
        {},
        False,
        registry(),
        {("c1", "b"): BadRequest("c1 is not managed")},
        {"c1": "failed", "c2": "running", "c3": "running", "c4": "pending"},
        lambda ev, acts: ev.moves["c1"].error == "c1 is not managed",
    ),
]


@pytest.mark.parametrize(
    "ev, migrations, cancel, nodes, refusals, want, check",
    [pytest.param(*row[1:], id=row[0]) for row in TICKS],
)
def test_a_tick_decides(
    ev: Evacuation,
    migrations: dict[str, Migration | None],
    cancel: bool,
    nodes: dict[str, dict[str, Any]],
    refusals: dict[tuple[str, str], FerryError],
    want: dict[str, str],
    check: Callable[[Evacuation, list[Action]], bool],
) -> None:
    before = to_dict(ev)
    obs = Observations(migrations, cancel, nodes)
    new, acts = tick(ev, obs, results=lambda s: refusals.get((s.container, s.dst)) or ok(s))
    assert outcomes(new) == want
    assert check(new, acts), (new, acts)
    assert to_dict(ev) == before, "advance changed its input"


def test_a_stale_submit_result_changes_nothing() -> None:
    ev = evacuation({"c1": "m1"})
    obs = Observations({}, False, registry())
    new, acts = submitted(ev, obs, Submit("c1", "b", "cold", None), "m-again", NOW)
    assert new.moves["c1"].migration == "m1"


def test_an_evacuation_that_is_over_asks_for_nothing() -> None:
    ev, _ = tick(evacuation(), Observations({}, True, registry()))
    assert ev.state is EvacState.CANCELLED
    assert advance(ev, Observations({}, False, registry()), NOW + 1) == (ev, [])


def test_outcomes_are_the_reports() -> None:
    assert tuple(o.value for o in Outcome if o.final) == OUTCOMES


def test_the_stored_format_is_the_runners_since_its_first_release() -> None:
    """A record as the runner stored it before the core existed reads and writes back the same."""
    old = {
        "id": "e-0123456789ab",
        "node": "a",
        "to": ["b", "c"],
        "strategy": "auto",
        "bandwidth_bps": 16e6,
        "limits": {"max_parallel": 4, "per_node": 2, "headroom": 0.1, "order": "small-first"},
        "link_bps": 1.25e8,
        "state": "running",
        "stop": None,
        "deadline": 1000.5,
        "plan": {
            "drain": {"name": "a", "arch": "x86_64", "mem_total_bytes": 8, "mem_free_bytes": 4},
            "moves": [
                {"container": "c1", "src": "a", "dst": "b", "order": 0, "memory_bytes": 1,
                 "group": None, "priority": 0},
                {"container": "c2", "src": "a", "dst": "c", "order": 1, "memory_bytes": 2,
                 "group": "db", "priority": 3},
            ],
            "unplaceable": [{"container": "c3", "reason": "no destination for 0 MiB: none"}],
            "headroom": 0.1,
        },
        "excluded": {"d": "it was cordoned"},
        "strikes": {"b": 1},
        "moves": {
            "c1": {"dst": "b", "order": 0, "memory_bytes": 1, "outcome": "moved",
                   "migration": "m-1", "error": "", "started": 10.0,
                   "summary": {"id": "m-1", "downtime_ms": 12.5, "errors": []}, "finished": 20.0},
            "c2": {"dst": "c", "order": 1, "memory_bytes": 2, "outcome": "pending",
                   "migration": None, "error": "c is busy"},
            "c3": {"dst": None, "order": 2, "memory_bytes": 0, "outcome": "not_placed",
                   "migration": None, "error": "no destination for 0 MiB: none"},
        },
        "preview": {"node": "a", "dry_run": False, "lower_bound_s": 0.0},
        "started": 5.0,
        "finished": None,
        "report": None,
    }  # fmt: skip
    ev = from_dict(old)
    assert ev.moves["c1"].outcome is Outcome.MOVED and ev.plan.moves[1].group == "db"
    assert ev.plan.unplaceable == (("c3", "no destination for 0 MiB: none"),)
    assert from_dict(json.loads(json.dumps(to_dict(ev)))) == ev  # and it is kept the new way


def test_the_examples_in_the_docstring_hold() -> None:
    assert doctest.testmod(tasks.core.evacuation).failed == 0


# --- properties: a random cluster, tick after tick ---------------------------------------

STATES = st.sampled_from([State.RUNNING, State.DONE, State.ROLLED_BACK, State.FAILED, None])
SUBMITS = st.sampled_from(["ok", "ok", "ok", "capability", "transient", "refused"])
NODE = st.fixed_dictionaries({"alive": st.booleans(), "cordoned": st.booleans()})
TICK = st.fixed_dictionaries(
    {
        "migrations": st.lists(STATES, min_size=4, max_size=4),
        "failed_in": st.sampled_from(["dump", "restore"]),
        "cancel": st.sampled_from([False] * 7 + [True]),
        "nodes": st.fixed_dictionaries({n: NODE for n in "bcd"}),
        "source": st.sampled_from(["up", "up", "up", "down", "lost one", "left"]),
        "submits": st.lists(SUBMITS, min_size=8, max_size=8),
    }
)


def calm() -> dict[str, Any]:
    """A tick where every migration finished and every node answers."""
    return {
        "migrations": [State.DONE] * 4,
        "failed_in": "",
        "cancel": False,
        "nodes": {x: {"alive": True, "cordoned": False} for x in "bcd"},
        "source": "up",
        "submits": ["ok"] * 8,
    }


def run(ticks: list[dict[str, Any]], deadline: float | None) -> list[Evacuation]:
    """Drive an evacuation through ``ticks``, then calm ones until it ends; the record each time."""
    ev = evacuation(deadline=deadline)
    history = [ev]
    submitted_once: set[str] = set()
    for i, t in enumerate([*ticks, *(calm() for _ in range(12))]):
        if ev.state is not EvacState.RUNNING:
            break
        migrations: dict[str, Migration | None] = {}
        running = [mv for mv in ev.moves.values() if mv.outcome is Outcome.RUNNING]
        for mv, state in zip(running, t["migrations"], strict=False):
            assert mv.migration is not None
            m = None if state is None else mig(mv.migration, mv.container, state, t["failed_in"])
            migrations[mv.migration] = m
        nodes = registry(**t["nodes"])
        if t["source"] == "down":
            nodes["a"] = replace(nodes["a"], alive=False)
        elif t["source"] == "left":
            del nodes["a"]
        elif t["source"] == "lost one":
            nodes["a"] = replace(nodes["a"], containers=nodes["a"].containers[1:])
        picks = iter(t["submits"])

        def result(s: Submit, picks: Any = picks) -> SubmitResult:
            kind = next(picks, "ok")
            if kind == "capability":
                return CapabilityError(f"{s.dst} cannot")
            if kind == "transient":
                return NodeUnavailable(f"{s.dst} is busy")
            if kind == "refused":
                return BadRequest("no")
            assert s.container not in submitted_once, f"{s.container} submitted twice"
            submitted_once.add(s.container)
            return f"m-{s.container}"

        ev, _ = tick(ev, Observations(migrations, t["cancel"], nodes), NOW + i, result)
        history.append(ev)
    return history


@settings(max_examples=150, deadline=None)
@given(ticks=st.lists(TICK, max_size=8), deadline=st.sampled_from([None, NOW + 3, NOW]))
def test_every_container_ends_with_one_outcome_and_none_is_submitted_twice(
    ticks: list[dict[str, Any]], deadline: float | None
) -> None:
    history = run(ticks, deadline)
    final = history[-1]
    assert final.state is not EvacState.RUNNING, outcomes(final)
    assert set(final.moves) == set(SIZES)
    assert all(mv.outcome.final for mv in final.moves.values())
    assert final.report is not None and sum(final.report["counts"].values()) == len(SIZES)
    # an outcome, once final, never changes; a running move keeps its migration
    seen: dict[str, MoveState] = {}
    for ev in history:
        for c, mv in ev.moves.items():
            was = seen.get(c)
            if was is not None and was.outcome.final:
                assert mv == was, (c, was, mv)
            if was is not None and was.outcome is Outcome.RUNNING:
                assert mv.migration == was.migration and mv.outcome is not Outcome.PENDING
            seen[c] = mv
        assert from_dict(json.loads(json.dumps(to_dict(ev)))) == ev
