"""The Python API: submit and follow migrations from any program::

    from tasks import Ferry
    ferry = Ferry()                     # FERRY_BROKER_URL, FERRY_SECRET, ...
    ferry.run("node1", ["python3", "-c", "..."], name="web")
    m = ferry.migrate("web", to="node2")
    m.wait(timeout=60).state            # State.DONE

A program that is not a worker needs nothing but the broker (and state store)
URL and the cluster secret.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Iterator
from dataclasses import replace
from typing import Any

from tasks.api.handles import EvacuationHandle, MigrationHandle
from tasks.control.cluster import Cluster
from tasks.control.evacuation import start
from tasks.core.admission import MigrationRequest
from tasks.core.evacplan import parse_rate
from tasks.core.migration import Migration
from tasks.core.netaddr import NodeNet, check_carry, check_claim
from tasks.core.planner import Order, PlanLimits
from tasks.core.resolve import LIVE, Settle, decide, keep_node
from tasks.messaging import auth
from tasks.messaging.app import node_queue
from workers.errors import BadRequest, NodeUnavailable, UnknownNode
from workers.ids import (
    MIGRATION_ID,
    check_container_name,
    check_migration_id,
    check_node_name,
    new_id,
)


class Ferry(Cluster):
    """A handle on a ferry cluster: everything the ``ferry`` command does."""

    def run(
        self,
        node: str,
        argv: list[str],
        name: str | None = None,
        labels: dict[str, str] | None = None,
        timeout: float = 30,
        sync: Collection[str] = (),
        net: str = "",
    ) -> dict[str, Any]:
        """Start ``argv`` as a container on ``node``.

        ``net``: its own address, ``ADDR/PREFIX`` in a network of the nodes'
        bridges (FERRY_BRIDGE), that moves with it: refused if another
        container or a node holds it, or ``node`` has no bridge on its network.

        ``sync``: its directories that are not on shared storage (absolute
        paths below the node's ``sync_roots``, or its workdir): each
        migration copies them with rsync. The node checks them (see
        workers.dirsync.dirs) and refuses the container if one is not allowed.
        """
        self.node(node)
        name = check_container_name(f"c-{new_id()[2:10]}" if name is None else name)
        sync = list(sync)
        bad = next((d for d in sync if not isinstance(d, str) or not d.startswith("/")), None)
        if bad is not None:
            raise BadRequest(f"bad sync dir {bad!r}: want an absolute path")
        live = [c for c in self.containers() if c["state"] != "exited"]
        if any(c["name"] == name for c in live):
            raise BadRequest(f"a container named {name!r} already runs: see `ferry ps`")
        if net:
            nodes = [NodeNet.of(n) for n in self.nodes()]
            held = {c["name"]: c.get("net", "") for c in live}
            check_carry(NodeNet.of(self.node(node)), check_claim(net, name, nodes, held))
        issued, argv, labels = time.time(), list(argv), labels or {}
        mac = auth.sign(self.secret, "run", issued, node, name, argv, labels, sync, net)
        args = (name, argv, labels, sync, net, issued, mac)
        res = self.app.send_task(
            "ferry.node.run", args=args, queue=node_queue(node), argsrepr=without_mac(args)
        )
        return self._get(res, timeout)

    def kill(self, name: str, timeout: float = 30, node: str | None = None) -> dict[str, Any]:
        """Kill container ``name`` (the copy on ``node``, where two nodes hold one)."""
        return self.command("kill", node or self.locate(name), check_container_name(name), timeout)

    def adopt(self, node: str, ref: str, timeout: float = 60) -> dict[str, Any]:
        """Put ``podman:NAME`` (a Podman container on ``node``) or ``runc:ID`` (one runc
        started there) into its inventory; the node refuses one that cannot be
        checkpointed, saying why."""
        self.node(node)
        engine, sep, name = ref.partition(":")
        if not sep or engine not in ("podman", "runc"):
            raise BadRequest(f"adopt {ref!r}: say podman:NAME or runc:ID")
        return self.command("adopt", node, f"{engine}:{check_container_name(name)}", timeout)

    def release(self, name: str, timeout: float = 30) -> dict[str, Any]:
        """Hand adopted container ``name`` back to its engine: ferry forgets it, it runs on."""
        return self.command("release", self.locate(name), check_container_name(name), timeout)

    def command(self, kind: str, node: str, name: str, timeout: float = 30) -> dict[str, Any]:
        """Send the signed ``ferry.node.<kind>`` (kill, continue, adopt, release) of ``name``
        to ``node``; its answer."""
        issued = time.time()
        mac = auth.sign(self.secret, kind, issued, node, name)
        args = (name, issued, mac)
        return self._get(
            self.app.send_task(
                f"ferry.node.{kind}", args=args, queue=node_queue(node), argsrepr=without_mac(args)
            ),
            timeout,
        )

    def _get(self, res: Any, timeout: float) -> dict[str, Any]:
        try:
            out: dict[str, Any] = res.get(timeout=timeout, propagate=False)
        except Exception as exc:  # celery's TimeoutError and friends
            raise NodeUnavailable(f"no answer from the node in {timeout:.0f} s") from exc
        if res.failed():
            raise BadRequest(str(out))
        return out

    # -- migrations ------------------------------------------------------------
    def migrate(
        self,
        container: str,
        to: str,
        strategy: str = "auto",
        *,
        downtime_limit_ms: float = 300.0,
        max_iterations: int = 10,
        goal_unchanged: float = 0.70,
        fallback: str = "postcopy",
        hard_downtime_cap: bool = False,
        bandwidth_bps: float | None = None,
        page_server: str | None = None,
        compression: str | None = None,
    ) -> MigrationHandle:
        """Submit a migration of ``container`` to node ``to``.

        ``strategy`` is auto (chosen from both nodes' probes, the container's
        size and the link), cold, precopy, delta, postcopy or hybrid. The
        pre-copy knobs are LXD's where the meaning is the same: at most
        ``max_iterations`` passes, stop once ``goal_unchanged`` of the pages
        stayed unchanged; ferry also stops once the expected downtime is
        under ``downtime_limit_ms``, and falls back (``fallback``: postcopy,
        cold or abort) when the workload does not converge. ``bandwidth_bps``
        caps this migration's data-plane transfers (bytes per second).
        ``page_server`` (auto, on, off; default the ``page_server`` setting):
        whether a cold dump streams its pages into the destination's CRIU.
        ``compression`` (auto, none, zstd; default the ``compression``
        setting): how image files travel; auto compresses when the link is
        slow enough for it to pay.
        """
        req = MigrationRequest(
            container=container,
            to=to,
            strategy=strategy,
            downtime_limit_ms=downtime_limit_ms,
            max_iterations=max_iterations,
            goal_unchanged=goal_unchanged,
            fallback=fallback,  # type: ignore[arg-type]  # Limits checks it, with a clear error
            hard_downtime_cap=hard_downtime_cap,
            bandwidth_bps=bandwidth_bps,
            page_server=page_server,
            compression=compression,
        )
        return MigrationHandle(self.submit(req), self)

    def migrations(self, limit: int | None = 20) -> list[Migration]:
        """The latest ``limit`` migrations, newest first (None: every one kept)."""
        if limit is None:
            return list(self.store.all_migrations())
        return list(self.store.iter_migrations(limit))

    def watch(self, mid: str, timeout: float | None = None) -> Iterator[dict[str, str]]:
        """Yield the migration's events as they happen, until it is final."""
        check_migration_id(mid)
        deadline = None if timeout is None else time.monotonic() + timeout
        last = "0"
        for eid, ev in self.store.events(mid):
            last = eid
            yield ev
        while not self.status(mid).state.final:
            if deadline is not None and time.monotonic() > deadline:
                return
            for eid, ev in self.store.events(mid, after=last, block_ms=500):
                last = eid
                yield ev

    def resolve(self, target: str, keep: str, force: bool = False) -> Settle:
        """Keep one copy of a split container, continued if frozen; kill the others.

        ``target``: a FAILED migration (``keep`` its ``source`` or
        ``destination``), or a container (``keep`` the copy on that node).
        What is safe is decided by tasks.core.resolve.decide; it raises
        BadRequest or NodeUnavailable (nothing done) when that is not safe.
        """
        m = self.status(target) if MIGRATION_ID.match(target) else None
        name = m.container if m else check_container_name(target)
        node = keep_node(m, keep) if m else check_node_name(keep)
        alive = {n.name: n.alive for n in self.nodes()}
        if node not in alive:
            raise UnknownNode(node, list(alive))
        # A migration's copies can be on its two nodes only; a container's, on any.
        copies: dict[str, str | None] = dict.fromkeys((m.src, m.dst) if m else alive)
        for c in self.containers():
            if c["name"] == name and c["node"] in copies and c["state"] in LIVE:
                copies[c["node"]] = str(c["state"])
        s = decide(name, node, copies, alive, force)
        for other in s.kill:
            self.command("kill", other, name)
        self.command("continue", s.keep, name)
        if m:
            self.store.update(m.id, lambda r: replace(r, errors=(*r.errors, s.note)), "resolved")
        return s

    # -- nodes out of service --------------------------------------------------
    def cordon(self, node: str) -> None:
        """Mark ``node`` so that nothing new lands on it (it may be down)."""
        self._registered(node)
        self.store.cordon(node, True)

    def uncordon(self, node: str) -> None:
        """Let containers land on ``node`` again."""
        self._registered(node)
        self.store.cordon(node, False)

    def _registered(self, node: str) -> None:
        if self.store.node(check_node_name(node)) is None:
            raise UnknownNode(node, [n.name for n in self.store.nodes()])

    def evacuate(
        self,
        node: str,
        to: Collection[str] | None = None,
        dry_run: bool = False,
        max_parallel: int = 4,
        per_node: int = 2,
        bandwidth: str | float | None = None,
        strategy: str = "auto",
        timeout: float | None = None,
        allow_partial: bool = False,
        order: Order = "small-first",
    ) -> EvacuationHandle:
        """Move every container off ``node``, which is cordoned first and stays cordoned.

        At most ``max_parallel`` migrations run at once, and ``per_node`` into
        or out of one node (one past its point of no return, only cleaning up
        its source, counts no more); ``bandwidth`` (bytes/s, or ``"50M"``, ``"64Mi"``,
        ``"800mbit"``) caps each. ``to`` limits the destinations. When a
        container has nowhere to go nothing moves and Unplaceable (a
        BadRequest) lists why, unless ``allow_partial``. A ``dry_run`` only
        plans. After ``timeout`` s no new move starts and running ones roll
        back where they still can. ``order``: ``small-first`` (each container
        off soonest on average), ``large-first`` (the shortest makespan) or
        ``priority`` (its label, then smallest).
        """
        limits = PlanLimits(max_parallel=max_parallel, per_node=per_node, order=order)
        eid, preview = start(
            self,
            node,
            to=to,
            dry_run=dry_run,
            limits=limits,
            bandwidth_bps=parse_rate(bandwidth),
            strategy=strategy,
            timeout=timeout,
            allow_partial=allow_partial,
        )
        return EvacuationHandle(eid, self, preview)

    def evacuation(self, eid: str) -> EvacuationHandle:
        """A handle on evacuation ``eid`` (started here or elsewhere)."""
        return EvacuationHandle(eid, self, self.store.evacuations.get(eid)["preview"])


def without_mac(args: tuple[Any, ...]) -> str:
    """How a signed command's args show in Flower and the events: its MAC (the last
    one) left out, so that no one who can read Flower can replay or learn from it.

    >>> without_mac(("web", 1.5, "f00d"))
    "('web', 1.5, '<mac>')"
    """
    return repr((*args[:-1], "<mac>"))
