"""The evacuation planner: placement and scheduling tables, then properties."""

from __future__ import annotations

import doctest
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tasks.core.planner
from tasks.core.planner import (
    ContainerSpec,
    Move,
    Node,
    Plan,
    PlanLimits,
    lower_bound_s,
    next_moves,
    plan,
    replan,
)
from workers.errors import BadRequest

G, M = 1 << 30, 1 << 20
DRAIN = Node("pi-01", "aarch64", 4 * G, 0, cordoned=True)
LIM = PlanLimits()


def pi(name: str, free_gib: float, **kw: object) -> Node:
    return Node(name, kw.pop("arch", "aarch64"), 4 * G, int(free_gib * G), **kw)  # type: ignore[arg-type]


def c(name: str, mib: int, **labels: str | int) -> ContainerSpec:
    return ContainerSpec(name, mib * M, {k.replace("_", "-"): v for k, v in labels.items()})


# (id, nodes, containers, limits, {container: dst}, {unplaceable: words in reason})
PLACEMENTS = [
    (
        "spread",
        [pi("pi-02", 3), pi("pi-03", 3)],
        [c("a", 512), c("b", 512)],
        LIM,
        {"a": "pi-02", "b": "pi-03"},
        {},
    ),
    ("most-free-wins", [pi("pi-02", 1), pi("pi-03", 3)], [c("a", 100)], LIM, {"a": "pi-03"}, {}),
    (
        "tie-fewest-containers",
        [pi("pi-02", 2, containers=5), pi("pi-03", 2)],
        [c("a", 100)],
        LIM,
        {"a": "pi-03"},
        {},
    ),
    (  # free memory probed a moment apart differs a little: within 5 % of 4 GiB, it spreads
        "near-free-spreads",
        [pi("pi-02", 3.1), pi("pi-03", 3.0)],
        [c("a", 16), c("b", 16), c("c", 16), c("d", 16)],
        LIM,
        {"a": "pi-02", "b": "pi-03", "c": "pi-02", "d": "pi-03"},
        {},
    ),
    ("headroom", [pi("pi-02", 1.2)], [c("a", 820)], LIM, {}, {"a": ["pi-02 has 819 MiB left"]}),
    ("headroom-fits", [pi("pi-02", 1.2)], [c("a", 819)], LIM, {"a": "pi-02"}, {}),
    (
        "no-headroom",
        [pi("pi-02", 1.2)],
        [c("a", 1228)],
        PlanLimits(headroom=0.0),
        {"a": "pi-02"},
        {},
    ),
    (
        "cordoned",
        [pi("pi-02", 3, cordoned=True), pi("pi-03", 1)],
        [c("a", 100)],
        LIM,
        {"a": "pi-03"},
        {},
    ),
    ("drained-listed", [DRAIN, pi("pi-02", 3)], [c("a", 100)], LIM, {"a": "pi-02"}, {}),
    (
        "arch",
        [pi("x86-01", 16, arch="x86_64")],
        [c("a", 100)],
        LIM,
        {},
        {"a": ["x86-01 is x86_64, not aarch64"]},
    ),
    ("nowhere", [], [c("a", 100)], LIM, {}, {"a": ["no other node"]}),
    (
        "anti-affinity",
        [pi("pi-02", 3), pi("pi-03", 3)],
        [
            c("db1", 100, anti_affinity="db"),
            c("db2", 100, anti_affinity="db"),
            c("db3", 100, anti_affinity="db"),
        ],
        LIM,
        {"db1": "pi-02", "db2": "pi-03"},
        {"db3": ["already runs anti-affinity group 'db'"]},
    ),
    (
        "anti-affinity-node-groups",
        [pi("pi-02", 3, groups=frozenset({"db"})), pi("pi-03", 1)],
        [c("db1", 100, anti_affinity="db")],
        LIM,
        {"db1": "pi-03"},
        {},
    ),
    (
        "priority-claims-first",
        [pi("pi-02", 1)],
        [c("low", 600), c("high", 500, priority=5)],
        LIM,
        {"high": "pi-02"},
        {"low": ["no destination for 600 MiB"]},
    ),
    (
        "largest-first-packs",
        [pi("pi-02", 2), pi("pi-03", 0.9)],
        [c("s1", 400), c("s2", 400), c("big", 900)],
        LIM,
        {"big": "pi-02", "s1": "pi-02", "s2": "pi-03"},
        {},
    ),
    (
        "compatible-refuses",
        [pi("pi-02", 3), pi("pi-03", 1)],
        [c("a", 100)],
        LIM,
        {"a": "pi-03"},
        {},
    ),
    ("zero-memory", [pi("pi-02", 0.5)], [c("idle", 0)], LIM, {"idle": "pi-02"}, {}),
]


def no_pi02(src: Node, dst: Node) -> str | None:
    return "has no lazy pages" if dst.name == "pi-02" else None


@pytest.mark.parametrize(
    ("nodes", "containers", "limits", "dsts", "refused"),
    [pytest.param(*row[1:], id=row[0]) for row in PLACEMENTS],
)
def test_placements(request, nodes, containers, limits, dsts, refused) -> None:
    compat = no_pi02 if "compatible" in request.node.callspec.id else None
    p = plan(DRAIN, nodes, containers, limits, compat)
    assert {m.container: m.dst for m in p.moves} == dsts
    assert {name for name, _ in p.unplaceable} == set(refused)
    for name, why in p.unplaceable:
        for w in refused[name]:
            assert w in why
    assert all(m.src == "pi-01" for m in p.moves)


@pytest.mark.parametrize(
    ("order", "expected"),
    [
        ("small-first", ["a-small", "b-mid", "c-mid", "d-big"]),
        ("large-first", ["d-big", "b-mid", "c-mid", "a-small"]),
        ("priority", ["b-mid", "a-small", "c-mid", "d-big"]),
    ],
)
def test_run_order(order, expected) -> None:
    cs = [c("d-big", 900), c("c-mid", 300), c("b-mid", 300, priority=2), c("a-small", 100)]
    p = plan(DRAIN, [pi("pi-02", 3), pi("pi-03", 3)], cs, PlanLimits(order=order))
    assert [m.container for m in sorted(p.moves, key=lambda m: m.order)] == expected


def moves(*spec: tuple[str, str, int]) -> Plan:
    ms = tuple(Move(name, "pi-01", dst, i, 100 * M) for i, (name, dst, _) in enumerate(spec))
    return Plan(DRAIN, ms, (), 0.1)


P4 = moves(("a", "pi-02", 0), ("b", "pi-02", 1), ("c", "pi-03", 2), ("d", "pi-04", 3))


@pytest.mark.parametrize(
    ("running", "done", "limits", "expected"),
    [
        ([], set(), PlanLimits(max_parallel=4, per_node=4), ["a", "b", "c", "d"]),
        ([], set(), PlanLimits(max_parallel=2, per_node=4), ["a", "b"]),
        ([], set(), PlanLimits(max_parallel=4, per_node=1), ["a"]),  # pi-01's way out
        ([], {"a"}, PlanLimits(max_parallel=4, per_node=4), ["b", "c", "d"]),
        ([P4.moves[0]], set(), PlanLimits(max_parallel=4, per_node=4), ["b", "c", "d"]),
        ([P4.moves[0]], set(), PlanLimits(max_parallel=2, per_node=4), ["b"]),
        ([P4.moves[0]], set(), PlanLimits(max_parallel=4, per_node=1), []),
        # pi-02 is busy with another drain: a and b wait, c goes, then pi-01's way out is full
        ([Move("x", "pi-09", "pi-02", 0, 1)], set(), PlanLimits(max_parallel=9, per_node=1), ["c"]),
        ([], {"a", "b", "c", "d"}, LIM, []),
    ],
)
def test_next_moves(running, done, limits, expected) -> None:
    assert [m.container for m in next_moves(P4, running, done, limits)] == expected


def test_replan_moves_pending_off_the_failed_node() -> None:
    nodes = [pi("pi-02", 3), pi("pi-03", 3), pi("pi-04", 3)]
    cs = [c(f"c{i}", 500, anti_affinity="g" if i < 2 else "") for i in range(6)]
    p = plan(DRAIN, nodes, cs, LIM)
    on_02 = [m.container for m in p.moves if m.dst == "pi-02"]
    running = on_02[:1]
    q = replan(p, "pi-02", nodes, running=running, compatible=None)
    assert [m.container for m in q.moves if m.dst == "pi-02"] == running
    assert {m.container for m in q.moves} | {n for n, _ in q.unplaceable} == {x.name for x in cs}
    groups = Counter((m.dst, m.group) for m in q.moves if m.group)
    assert max(groups.values()) == 1


def test_replan_keeps_reservations_of_pending_moves() -> None:
    nodes = [pi("pi-02", 1.4), pi("pi-03", 1.4)]
    p = plan(DRAIN, nodes, [c("a", 1000), c("b", 1000)], LIM)
    assert {m.dst for m in p.moves} == {"pi-02", "pi-03"}
    failed = next(m.dst for m in p.moves if m.container == "a")
    q = replan(p, failed, nodes)
    assert [m.container for m in q.moves] == ["b"]
    assert q.unplaceable[0][0] == "a"
    # a fresh record already counts b's memory once b is done: it is not reserved twice
    other = next(n.name for n in nodes if n.name != failed)
    fresh = [Node(other, "aarch64", 4 * G, int(0.4 * G) + 1 + 1500 * M)]
    assert [m.container for m in replan(p, failed, fresh, done={"b"}).moves] == ["a", "b"]
    assert [m.container for m in replan(p, failed, fresh, running={"b"}).moves] == ["b"]


@pytest.mark.parametrize(
    ("sizes", "dsts", "bw", "seconds"),
    [
        ([], [], 1e6, 0.0),
        ([100e6], ["pi-02"], 100e6, 1.0),
        ([100e6, 50e6, 50e6], ["pi-02", "pi-03", "pi-04"], 100e6, 2.0),
    ],
)
def test_lower_bound(sizes, dsts, bw, seconds) -> None:
    ms = tuple(
        Move(f"m{i}", "pi-01", d, i, int(s))
        for i, (s, d) in enumerate(zip(sizes, dsts, strict=True))
    )
    assert lower_bound_s(Plan(DRAIN, ms, (), 0.1), bw) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "make",
    [
        lambda: plan(DRAIN, [pi("a", 1), pi("a", 1)], [], LIM),
        lambda: plan(DRAIN, [], [c("x", 1), c("x", 2)], LIM),
        lambda: plan(DRAIN, [], [ContainerSpec("x", -1)], LIM),
        lambda: plan(DRAIN, [pi("a", 1)], [c("x", 1, priority="high")], LIM),
        lambda: PlanLimits(max_parallel=0),
        lambda: PlanLimits(headroom=1.0),
        lambda: PlanLimits(order="random"),  # type: ignore[arg-type]
        lambda: lower_bound_s(P4, 0),
    ],
)
def test_bad_input(make) -> None:
    with pytest.raises(BadRequest):
        make()


def test_worked_example_in_docstring() -> None:
    assert doctest.testmod(tasks.core.planner).failed == 0


# --- properties -------------------------------------------------------------

ARCHES = ["aarch64", "aarch64", "aarch64", "x86_64"]
GROUPS = ["", "", "db", "web"]

node_st = st.builds(
    Node,
    name=st.sampled_from([f"pi-{i:02}" for i in range(1, 9)]),
    arch=st.sampled_from(ARCHES),
    mem_total_bytes=st.just(8 * G),
    mem_free_bytes=st.integers(0, 8 * G) | st.just(8 * G),  # half the time: empty
    cordoned=st.sampled_from([False, False, False, True]),
    containers=st.integers(0, 5),
    groups=st.frozensets(st.sampled_from(["db", "web"]), max_size=1),
)
container_st = st.builds(
    ContainerSpec,
    name=st.sampled_from([f"c{i}" for i in range(30)]),
    memory_bytes=st.integers(0, G) | st.integers(0, 3 * G),
    labels=st.fixed_dictionaries(
        {"anti-affinity": st.sampled_from(GROUPS), "priority": st.integers(0, 3)}
    ),
)
cluster = st.tuples(
    st.lists(node_st, min_size=1, max_size=6, unique_by=lambda n: n.name),
    st.lists(container_st, max_size=15, unique_by=lambda c: c.name),
    st.builds(
        PlanLimits,
        max_parallel=st.integers(1, 6),
        per_node=st.integers(1, 3),
        headroom=st.sampled_from([0.0, 0.1, 0.25]),
        order=st.sampled_from(["small-first", "large-first", "priority"]),
    ),
)


def check_plan(p: Plan, nodes: list[Node], names: set[str], exclude: str = "") -> None:
    by_name = {n.name: n for n in nodes}
    placed = [m.container for m in p.moves] + [n for n, _ in p.unplaceable]
    assert sorted(placed) == sorted(names)  # each exactly once
    load: Counter[str] = Counter()
    for m in p.moves:
        if m.dst == exclude:
            continue
        dst = by_name[m.dst]
        assert m.src == DRAIN.name != m.dst
        assert dst.arch == DRAIN.arch and not dst.cordoned
        if m.group:
            assert m.group not in dst.groups
        load[m.dst] += m.memory_bytes
    for name, used in load.items():
        n = by_name[name]
        assert used + p.headroom * n.mem_total_bytes <= n.mem_free_bytes
    pairs = Counter((m.dst, m.group) for m in p.moves if m.group)
    assert all(k == 1 for k in pairs.values())


@settings(max_examples=200, deadline=None)
@given(cluster)
def test_plan_invariants(args) -> None:
    nodes, cs, limits = args
    nodes = [n for n in nodes if n.name != DRAIN.name] + [DRAIN]
    p = plan(DRAIN, nodes, cs, limits)
    check_plan(p, nodes, {c.name for c in cs})


@settings(max_examples=200, deadline=None)
@given(cluster, st.data())
def test_next_moves_within_limits(args, data) -> None:
    nodes, cs, limits = args
    p = plan(DRAIN, nodes, cs, limits)
    done = set(data.draw(st.sets(st.sampled_from([m.container for m in p.moves] or ["-"]))))
    # simulate: start what next_moves allows, finish a random few, repeat
    running: list[Move] = []
    for _ in range(len(p.moves) + 1):
        start = next_moves(p, running, done, limits)
        busy = {m.container for m in running} | done
        assert not busy & {m.container for m in start}
        running += start
        assert len(running) <= limits.max_parallel
        assert max(Counter(m.src for m in running).values(), default=0) <= limits.per_node
        assert max(Counter(m.dst for m in running).values(), default=0) <= limits.per_node
        if running:
            finished = data.draw(st.integers(1, len(running)))
            done |= {m.container for m in running[:finished]}
            running = running[finished:]
    assert done >= {m.container for m in p.moves} or not p.moves


@settings(max_examples=200, deadline=None)
@given(cluster, st.data())
def test_replan_invariants(args, data) -> None:
    nodes, cs, limits = args
    p = plan(DRAIN, nodes, cs, limits)
    if not p.moves:
        return
    failed = data.draw(st.sampled_from(sorted({m.dst for m in p.moves})))
    running = data.draw(st.sets(st.sampled_from([m.container for m in p.moves])))
    q = replan(p, failed, nodes, running=running)
    check_plan(q, nodes, {c.name for c in cs}, exclude=failed)
    assert all(m.container in running for m in q.moves if m.dst == failed)
    assert lower_bound_s(q, 1e8) <= sum(m.memory_bytes for m in q.moves) / 1e8 + 1e-9
