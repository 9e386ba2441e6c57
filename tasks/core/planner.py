"""The evacuation planner: where each container of a drained node goes, and when.

Pure: node records and container specs in, a :class:`Plan` out. A plan never

- overcommits a destination: its placed containers plus ``headroom`` of its
  total memory fit in its free memory;
- crosses architectures, or lands on a cordoned node or the drained node;
- puts two containers of one anti-affinity group on one node, nor one on a
  node whose record lists that group in ``groups``;
- loses a container: each is in ``moves`` or ``unplaceable``, exactly once.

Placement claims capacity by priority, then largest first (first-fit
decreasing packs best); each container goes to the fitting node with the most
free memory left after it, where nodes within 5 % of their total of that are as
good and the one running fewest containers wins (spreading: free memory probed
a moment apart never sends them all one way). ``Move.order`` is the run order:
smallest first (each container done soonest on average), largest first (the
shortest makespan: the small moves fill the gaps at the end), or by priority
then smallest. :func:`next_moves` says which
moves may start now; :func:`replan` re-places moves pending to a destination
that failed or filled.

Worked example: drain pi-01 (aarch64) onto pi-02 (3 GiB free) and pi-03 (2 GiB)::

    >>> G = 1 << 30
    >>> nodes = [Node("pi-02", "aarch64", 4 * G, 3 * G), Node("pi-03", "aarch64", 4 * G, 2 * G),
    ...          Node("x86-01", "x86_64", 16 * G, 16 * G)]
    >>> cs = [ContainerSpec("db-a", G, {"anti-affinity": "db"}),
    ...       ContainerSpec("db-b", G, {"anti-affinity": "db"}),
    ...       ContainerSpec("web", G // 2), ContainerSpec("big", 3 * G)]
    >>> p = plan(Node("pi-01", "aarch64", 4 * G, 0), nodes, cs, PlanLimits())
    >>> [(m.container, m.dst, m.order) for m in p.moves]
    [('db-a', 'pi-02', 1), ('db-b', 'pi-03', 2), ('web', 'pi-02', 0)]
    >>> p.unplaceable[0][0]
    'big'
    >>> [m.container for m in next_moves(p, [], set(), PlanLimits(per_node=1))]
    ['web']
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

from tasks.core.bound import Leg, lower_bound
from workers.errors import BadRequest

Order = Literal["small-first", "large-first", "priority"]
ORDERS = ("small-first", "large-first", "priority")


@dataclass(frozen=True)
class Node:
    name: str
    arch: str
    mem_total_bytes: int
    mem_free_bytes: int
    cordoned: bool = False
    labels: Mapping[str, str] = field(default_factory=dict)  # for `compatible` callables
    containers: int = 0  # running there now
    groups: frozenset[str] = frozenset()  # anti-affinity groups running there now


@dataclass(frozen=True)
class ContainerSpec:
    name: str
    memory_bytes: int
    labels: Mapping[str, str | int] = field(default_factory=dict)

    @property
    def group(self) -> str | None:
        g = self.labels.get("anti-affinity")
        return None if g in (None, "") else str(g)

    @property
    def priority(self) -> int:
        try:
            return int(self.labels.get("priority", 0))
        except ValueError:
            raise BadRequest(f"{self.name}: priority label must be an integer") from None


@dataclass(frozen=True)
class PlanLimits:
    max_parallel: int = 4  # moves running at once, cluster-wide
    per_node: int = 2  # moves at once into a node, and (separately) out of it
    headroom: float = 0.10  # share of each destination's total memory kept free
    order: Order = "small-first"

    def __post_init__(self) -> None:
        if not all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 1
            for v in (self.max_parallel, self.per_node)
        ):
            raise BadRequest(
                f"max_parallel and per_node must be whole numbers >= 1, not "
                f"{self.max_parallel!r} and {self.per_node!r}"
            )
        if not 0.0 <= self.headroom < 1.0:
            raise BadRequest(f"headroom must be in [0, 1), not {self.headroom}")
        if self.order not in ORDERS:
            raise BadRequest(f"order must be one of {', '.join(ORDERS)}, not {self.order!r}")


@dataclass(frozen=True)
class Move:
    container: str
    src: str
    dst: str
    order: int  # run order, 0 first
    memory_bytes: int
    group: str | None = None
    priority: int = 0


@dataclass(frozen=True)
class Plan:
    drain: Node
    moves: tuple[Move, ...]
    unplaceable: tuple[tuple[str, str], ...]  # (container, reason)
    headroom: float


Compatible = Callable[[Node, Node], str | None]


SPREAD = 0.05  # free memory within 5 % of a node's total: as good, the fewer containers wins


def _mib(n: float) -> str:
    return f"{n / (1 << 20):.0f} MiB"


def _refusal(
    n: Node, item: Move, drain: Node, left: int, groups: set[str], compatible: Compatible | None
) -> str | None:
    """Why ``item`` cannot go to ``n`` (``left``: bytes free there after headroom), or None."""
    if n.name == drain.name:
        return "is the drained node"
    if n.cordoned:
        return "is cordoned"
    if n.arch != drain.arch:
        return f"is {n.arch}, not {drain.arch}"
    if item.group is not None and item.group in groups:
        return f"already runs anti-affinity group {item.group!r}"
    if compatible is not None and (why := compatible(drain, n)):
        return why
    if left < item.memory_bytes:
        return f"has {_mib(max(left, 0))} left after headroom"
    return None


def _place(
    items: Sequence[Move],
    drain: Node,
    nodes: Sequence[Node],
    headroom: float,
    compatible: Compatible | None,
    reserved: Counter[str],
    groups: dict[str, set[str]],
) -> tuple[list[Move], list[tuple[str, str]]]:
    """Place ``items`` in the order given; ``reserved`` and ``groups`` are updated."""
    placed: list[Move] = []
    refused: list[tuple[str, str]] = []
    count = Counter({n.name: n.containers for n in nodes})
    for n in nodes:
        groups.setdefault(n.name, set()).update(n.groups)
    for item in items:
        fits: list[tuple[int, int, str, int]] = []  # (memory left after, containers, name, total)
        why: list[str] = []
        for n in nodes:
            left = n.mem_free_bytes - math.ceil(headroom * n.mem_total_bytes) - reserved[n.name]
            refusal = _refusal(n, item, drain, left, groups[n.name], compatible)
            if refusal:
                why.append(f"{n.name} {refusal}")
                continue
            fits.append((left - item.memory_bytes, count[n.name], n.name, n.mem_total_bytes))
        if not fits:
            detail = "; ".join(why) if why else "no other node"
            refused.append(
                (item.container, f"no destination for {_mib(item.memory_bytes)}: {detail}")
            )
            continue
        # the most memory left after placing; nodes within SPREAD of the most are as good,
        # and of those the one running fewest containers (then by name) takes it
        most = max(f[0] for f in fits)
        near = [f for f in fits if most - f[0] <= SPREAD * f[3]]
        dst = min(near, key=lambda f: (f[1], -f[0], f[2]))[2]
        reserved[dst] += item.memory_bytes
        count[dst] += 1
        if item.group is not None:
            groups[dst].add(item.group)
        placed.append(replace(item, src=drain.name, dst=dst))
    return placed, refused


def _run_key(order: Order) -> Callable[[Move], tuple[int, int, str]]:
    if order == "priority":
        return lambda m: (-m.priority, m.memory_bytes, m.container)
    if order == "large-first":  # the longest first: the short fill the gaps at the end
        return lambda m: (0, -m.memory_bytes, m.container)
    return lambda m: (0, m.memory_bytes, m.container)


def _unique(names: Iterable[str], what: str) -> None:
    dup = [n for n, k in Counter(names).items() if k > 1]
    if dup:
        raise BadRequest(f"duplicate {what}: {', '.join(sorted(dup))}")


def plan(
    drain: Node,
    nodes: Sequence[Node],
    containers: Sequence[ContainerSpec],
    limits: PlanLimits,
    compatible: Compatible | None = None,
) -> Plan:
    """Place every container of ``drain`` on another node, or say why it cannot be."""
    _unique((n.name for n in nodes), "node names")
    _unique((c.name for c in containers), "container names")
    if any(c.memory_bytes < 0 for c in containers):
        raise BadRequest("container memory must be >= 0")
    items = [
        Move(c.name, drain.name, "", 0, c.memory_bytes, c.group, c.priority) for c in containers
    ]
    run = _run_key(limits.order)
    order = {m.container: i for i, m in enumerate(sorted(items, key=run))}
    items = [replace(m, order=order[m.container]) for m in items]
    # capacity goes to priority first, then to the largest (first-fit decreasing)
    items.sort(key=lambda m: (-m.priority, -m.memory_bytes, m.container))
    placed, refused = _place(items, drain, nodes, limits.headroom, compatible, Counter(), {})
    placed.sort(key=lambda m: m.container)
    return Plan(drain, tuple(placed), tuple(refused), limits.headroom)


def next_moves(
    plan: Plan, running: Sequence[Move], done: Collection[str], limits: PlanLimits
) -> list[Move]:
    """The moves of ``plan`` that may start now, in run order, within the limits."""
    busy = {m.container for m in running} | set(done)
    out = Counter(m.src for m in running)
    into = Counter(m.dst for m in running)
    slots = limits.max_parallel - len(running)
    start: list[Move] = []
    for m in sorted(plan.moves, key=lambda m: (m.order, m.container)):
        if len(start) >= slots:
            break
        if m.container in busy or out[m.src] >= limits.per_node or into[m.dst] >= limits.per_node:
            continue  # a busy destination does not hold back moves to the others
        start.append(m)
        out[m.src] += 1
        into[m.dst] += 1
    return start


def replan(
    plan: Plan,
    failed_dst: str,
    nodes: Sequence[Node],
    *,
    running: Collection[str] = (),
    done: Collection[str] = (),
    compatible: Compatible | None = None,
) -> Plan:
    """Re-place the moves pending to ``failed_dst`` over fresh ``nodes`` records.

    Moves running or done stay. Fresh records count done moves already; moves
    still pending or running elsewhere are reserved on top of them.
    """
    _unique((n.name for n in nodes), "node names")
    started = set(running) | set(done)
    keep = [m for m in plan.moves if m.dst != failed_dst or m.container in started]
    redo = [m for m in plan.moves if m.dst == failed_dst and m.container not in started]
    reserved: Counter[str] = Counter()
    groups: dict[str, set[str]] = {}
    for m in keep:
        if m.container not in done:
            reserved[m.dst] += m.memory_bytes
        if m.group is not None:
            groups.setdefault(m.dst, set()).add(m.group)
    usable = [n for n in nodes if n.name != failed_dst]
    redo.sort(key=lambda m: (-m.priority, -m.memory_bytes, m.container))
    placed, refused = _place(redo, plan.drain, usable, plan.headroom, compatible, reserved, groups)
    moves = tuple(sorted(keep + placed, key=lambda m: m.container))
    return Plan(plan.drain, moves, plan.unplaceable + tuple(refused), plan.headroom)


def lower_bound_s(plan: Plan, bandwidth_bps_per_node: float) -> float:
    """Seconds the plan takes at best when every node's link carries ``bandwidth_bps_per_node``
    and no freeze is known yet (tasks.core.bound, before anything was measured)."""
    legs = [Leg(m.container, m.src, m.dst, m.memory_bytes) for m in plan.moves]
    return lower_bound(legs, {}, bandwidth_bps_per_node).seconds
