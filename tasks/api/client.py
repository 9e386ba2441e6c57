"""The Python API: submit and follow migrations from any program.

    >>> from tasks.api.client import Ferry                      # doctest: +SKIP
    >>> ferry = Ferry()                 # FERRY_BROKER_URL, FERRY_SECRET, ...
    >>> ferry.run("node1", ["python3", "-c", "..."], name="web")
    >>> m = ferry.migrate("web", to="node2")
    >>> m.wait(timeout=60).state
    'done'

A program that is not a worker needs nothing but the broker (and state store)
URL and the cluster secret.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Iterator
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from celery import Celery

from tasks.messaging import auth
from tasks.messaging.app import CONTROL_QUEUE, make_app, node_queue
from tasks.config.broker import connect, resolve
from tasks.core.chooser import Link, NodeCaps, Request, Workload, choose, strategy_refusal
from tasks.core.chooser import page_server as use_page_server
from tasks.core.convergence import Limits
from tasks.control.coordinator import HEARTBEAT_KEY
from tasks.store.evacuations import EvacuationHandle, Records
from tasks.core.machine import Migration, State
from tasks.core.planner import PlanLimits
from tasks.config.settings import Settings, check_node_name
from tasks.store.migrations import Store, check_migration_id, new_id
from workers.errors import (
    BadRequest,
    CapabilityError,
    FerryError,
    NodeUnavailable,
    TooLate,
    UnknownContainer,
    UnknownNode,
)
from workers.runtimes.base import check_container_name
from workers.dataplane.wire import CODECS

if TYPE_CHECKING:
    from tasks.api.resolve import Settle


def caps(rec: dict[str, Any]) -> NodeCaps:
    """A node's capabilities, as the chooser sees them, from its registry record."""
    p = rec.get("probe", {})
    sim = rec.get("runtime") == "sim"
    return NodeCaps(name=rec["name"], arch=p.get("arch", "?"), runtime=rec.get("runtime", "criu"),
                    criu_ok=sim or bool(p.get("criu_ok")), soft_dirty=sim or bool(p.get("soft_dirty")),
                    lazy_pages=bool(p.get("lazy_pages")),
                    lazy_pages_reason=str(p.get("lazy_pages_reason", "")),
                    mem_free_bytes=int(p.get("mem_free_bytes", 1 << 40)),
                    disk_free_bytes=int(p.get("disk_free_bytes", 1 << 40)),
                    cordoned=bool(rec.get("cordoned")), criu_reason=str(p.get("criu_reason", "")))


@dataclass
class MigrationHandle:
    """A submitted migration: follow it, wait for it."""

    id: str
    client: Ferry

    def status(self) -> Migration:
        return self.client.status(self.id)

    def progress(self) -> dict[str, Any]:
        m = self.status()
        return {"state": m.state.value, "phase": m.phase.value if m.phase else None,
                "attempt": m.attempt, **m.results.get("progress", {})}

    def wait(self, timeout: float | None = None, poll_s: float = 0.1) -> Migration:
        """Block until the migration is final; raise TimeoutError after ``timeout`` s."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            m = self.status()
            if m.state.final:
                return m
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"{self.id} still {m.state.value} ({m.phase}) after {timeout} s")
            time.sleep(poll_s)

    def result(self) -> Migration:
        """The final record; raises FerryError if the migration did not finish DONE."""
        m = self.wait()
        if m.state is not State.DONE:
            raise FerryError(f"{self.id} {m.state.value}: {m.errors[-1] if m.errors else ''}")
        return m


class Ferry:
    """A handle on a ferry cluster."""

    def __init__(self, settings: Settings | None = None, *, store: Store | None = None,
                 app: Celery | None = None) -> None:
        self.settings = resolve(settings or Settings.from_env())
        self.store = store or Store(connect(self.settings))
        self._app: Celery | None = app

    @property
    def secret(self) -> bytes:
        return self.settings.secret.encode()

    @property
    def app(self) -> Celery:
        if self._app is None:
            self._app = make_app(self.settings)
        return self._app

    # -- nodes and containers --------------------------------------------------
    def nodes(self) -> list[dict[str, Any]]:
        """Every registered node, with ``alive`` from its heartbeat."""
        now = time.time()
        out = []
        for n in self.store.nodes():
            n["alive"] = n.get("state") == "up" and now - n.get("last_seen", 0) < self.settings.node_ttl_s
            out.append(n)
        return out

    def node(self, name: str) -> dict[str, Any]:
        check_node_name(name)
        rec = self.store.node(name)
        if rec is None:
            raise UnknownNode(name, [n["name"] for n in self.store.nodes()])
        rec["alive"] = rec.get("state") == "up" and time.time() - rec.get("last_seen", 0) < self.settings.node_ttl_s
        if not rec["alive"]:
            raise NodeUnavailable(f"node {name} is not answering (last seen "
                                  f"{time.time() - rec.get('last_seen', 0):.0f} s ago): is `ferry worker --node {name}` running?")
        return rec

    def containers(self) -> list[dict[str, Any]]:
        """Every container on every node, as the nodes last reported them."""
        return [{**c, "node": n["name"]} for n in self.nodes() for c in n.get("containers", [])]

    def locate(self, name: str) -> str:
        """The node that runs container ``name``."""
        check_container_name(name)
        for c in self.containers():
            if c["name"] == name and c["state"] != "exited":
                return str(c["node"])
        raise UnknownContainer(name)

    def run(self, node: str, argv: list[str], name: str | None = None,
            labels: dict[str, str] | None = None, timeout: float = 30,
            sync: Collection[str] = ()) -> dict[str, Any]:
        """Start ``argv`` as a container on ``node``.

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
        if any(c["name"] == name and c["state"] != "exited" for c in self.containers()):
            raise BadRequest(f"a container named {name!r} already runs: see `ferry ps`")
        issued, argv, labels = time.time(), list(argv), labels or {}
        mac = auth.sign(self.secret, "run", issued, node, name, argv, labels, sync)
        res = self.app.send_task("ferry.node.run", args=(name, argv, labels, sync, issued, mac),
                                 queue=node_queue(node))
        return self._get(res, timeout)

    def kill(self, name: str, timeout: float = 30, node: str | None = None) -> dict[str, Any]:
        """Kill container ``name`` (the copy on ``node``, where two nodes hold one)."""
        return self.command("kill", node or self.locate(name), check_container_name(name), timeout)

    def command(self, kind: str, node: str, name: str, timeout: float = 30) -> dict[str, Any]:
        """Send the signed ``ferry.node.<kind>`` (kill, continue) of ``name`` to ``node``; its answer."""
        issued = time.time()
        mac = auth.sign(self.secret, kind, issued, node, name)
        return self._get(self.app.send_task(f"ferry.node.{kind}", args=(name, issued, mac),
                                            queue=node_queue(node)), timeout)

    def _get(self, res: Any, timeout: float) -> dict[str, Any]:
        try:
            out: dict[str, Any] = res.get(timeout=timeout, propagate=False)
        except Exception as exc:  # celery's TimeoutError and friends
            raise NodeUnavailable(f"no answer from the node in {timeout:.0f} s") from exc
        if res.failed():
            raise BadRequest(str(out))
        return out

    # -- migrations ------------------------------------------------------------
    def migrate(self, container: str, to: str, strategy: str = "auto", *,
                downtime_limit_ms: float = 300.0, max_iterations: int = 10,
                goal_unchanged: float = 0.70, fallback: str = "postcopy",
                hard_downtime_cap: bool = False,
                bandwidth_bps: float | None = None,
                page_server: str | None = None,
                compression: str | None = None) -> MigrationHandle:
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
        check_container_name(container)
        check_node_name(to)
        limits = Limits(max_iterations=max_iterations, goal_unchanged=goal_unchanged,
                        downtime_limit_ms=downtime_limit_ms, fallback=fallback,  # type: ignore[arg-type]
                        hard_downtime_cap=hard_downtime_cap)
        src = self.locate(container)
        if src == to:
            raise BadRequest(f"{container} already runs on {to}")
        dst_rec, src_rec = self.node(to), self.node(src)
        for rec in (src_rec, dst_rec):
            probe = rec.get("probe", {})
            if rec.get("runtime") == "criu" and not probe.get("criu_ok"):
                raise CapabilityError(f"{rec['name']} cannot run CRIU: {probe.get('criu_reason')}")
        held = next(c for c in src_rec["containers"] if c["name"] == container)
        memory, sync = held["memory_bytes"], list(held.get("sync", ()))
        if bandwidth_bps is not None and not 0 < bandwidth_bps < float("inf"):  # NaN too
            raise BadRequest(f"bandwidth must be > 0 bytes/s and finite, not {bandwidth_bps}")
        link = min(self.settings.link_bps, bandwidth_bps or self.settings.link_bps)
        choice = choose(caps(src_rec), caps(dst_rec), Workload(memory),
                        Link(link, overhead_ms=self.settings.freeze_overhead_ms),
                        Request(strategy, downtime_limit_ms))
        compression = compression or self.settings.compression
        if compression not in ("auto", *CODECS):
            raise BadRequest(f"compression must be auto, none or zstd, not {compression!r}")
        pages, pages_why = use_page_server(page_server or self.settings.page_server, choice.strategy,
                                   caps(src_rec), caps(dst_rec))
        if not self.store.r.exists(HEARTBEAT_KEY):
            raise NodeUnavailable("no coordinator is running: start `ferry coordinator`")
        now = time.time()
        extra = {"memory_bytes": memory, "timeout_action": self.settings.timeout_action,
                 "page_server": pages, "page_server_why": pages_why, "link_bps": self.settings.link_bps,
                 "compression": compression,
                 "lazy_ok": strategy_refusal("postcopy", caps(src_rec), caps(dst_rec)) is None}
        if bandwidth_bps:
            extra["bandwidth_bps"] = bandwidth_bps  # tasks.node.phases.send_dir caps each transfer
        m_id = new_id()
        m = Migration(id=m_id, container=container, src=src, dst=to, strategy=choice.strategy,
                      lazy=choice.strategy in ("postcopy", "hybrid"), sync=tuple(sync),
                      limits={**asdict(limits), **extra},
                      reason=choice.reason, created=now, updated=now,
                      mac=auth.sign(self.secret, "migration", m_id, container, src, to,
                                    choice.strategy, sync))
        self.store.create(m)
        self.app.send_task("ferry.control.start", args=(m.id,), queue=CONTROL_QUEUE)
        return MigrationHandle(m.id, self)

    def status(self, mid: str) -> Migration:
        return self.store.get(check_migration_id(mid))

    def migrations(self, limit: int = 20) -> list[Migration]:
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

    def cancel(self, mid: str) -> Migration:
        """Roll ``mid`` back; TooLate once it is past its point of no return."""
        m = self.status(mid)
        if m.state.final:
            raise BadRequest(f"{mid} is already {m.state.value}")
        if m.past_no_return:
            raise TooLate(f"{mid} is past its point of no return: it will finish on {m.dst}")
        self.app.send_task("ferry.control.cancel", args=(mid,), queue=CONTROL_QUEUE)
        return m

    def resolve(self, target: str, keep: str, force: bool = False) -> Settle:
        """Keep one copy of a split container, continued if frozen; kill the others.

        ``target``: a FAILED migration (``keep`` its ``source`` or
        ``destination``), or a container (``keep`` the copy on that node).
        See tasks.api.resolve; raises BadRequest or NodeUnavailable (nothing done)
        when that is not safe.
        """
        from tasks.api.resolve import resolve as settle

        return settle(self, target, keep, force)

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
            raise UnknownNode(node, [n["name"] for n in self.store.nodes()])

    def evacuate(self, node: str, to: Collection[str] | None = None, dry_run: bool = False,
                 max_parallel: int = 4, per_node: int = 2, bandwidth: str | float | None = None,
                 strategy: str = "auto", timeout: float | None = None,
                 allow_partial: bool = False) -> EvacuationHandle:
        """Move every container off ``node``, which is cordoned first and stays cordoned.

        At most ``max_parallel`` migrations run at once, and ``per_node`` into
        or out of one node; ``bandwidth`` (bytes/s, or ``"50M"``, ``"64Mi"``,
        ``"800mbit"``) caps each. ``to`` limits the destinations. When a
        container has nowhere to go nothing moves and Unplaceable (a
        BadRequest) lists why, unless ``allow_partial``. A ``dry_run`` only
        plans. After ``timeout`` s no new move starts and running ones roll
        back where they still can.
        """
        from tasks.core.evacplan import parse_rate
        from tasks.control.evacuation import start

        limits = PlanLimits(max_parallel=max_parallel, per_node=per_node)
        eid, preview = start(self, node, to=to, dry_run=dry_run, limits=limits,
                             bandwidth_bps=parse_rate(bandwidth), strategy=strategy,
                             timeout=timeout, allow_partial=allow_partial)
        return EvacuationHandle(eid, self, preview)

    def evacuation(self, eid: str) -> EvacuationHandle:
        """A handle on evacuation ``eid`` (started here or elsewhere)."""
        return EvacuationHandle(eid, self, Records(self.store.r).get(eid)["preview"])
