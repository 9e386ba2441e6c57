"""A cluster as the control side drives it: its nodes, and submitting and cancelling
migrations.

Everything that starts a migration goes through :meth:`Cluster.submit` (the
Python API's ``Ferry.migrate`` and the evacuation runner alike), so every
request is checked the same way: names, both nodes alive, then the pure
admission (tasks.core.admission: able, the strategy the chooser picks, the
options), and a coordinator to drive it.
"""

from __future__ import annotations

import time
from collections.abc import Collection
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from tasks.config.broker import connect, resolve
from tasks.config.settings import Settings
from tasks.core.admission import Defaults, MigrationRequest, admit
from tasks.core.codec import encode
from tasks.core.migration import Event, Migration
from tasks.core.nodes import NodeRecord
from tasks.messaging import auth
from tasks.messaging.app import CONTROL_QUEUE, dispatch, make_app
from tasks.store.migrations import Store
from workers.errors import BadRequest, NodeUnavailable, TooLate, UnknownContainer, UnknownNode
from workers.ids import (
    check_container_name,
    check_evac_id,
    check_migration_id,
    check_node_name,
    new_id,
)

if TYPE_CHECKING:
    from celery import Celery

LINK_TTL_S = 86400.0  # a measured rate older than this is not trusted


class Cluster:
    """The nodes, the state store and the queues of one ferry cluster."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        store: Store | None = None,
        app: Celery | None = None,
    ) -> None:
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
    def nodes(self, inventories: Collection[str] | None = None) -> list[NodeRecord]:
        """Every registered node, with ``alive`` from its heartbeat; the containers of
        ``inventories`` only, if given (the others carry their usage)."""
        now, ttl = time.time(), self.settings.node_ttl_s
        return [replace(n, alive=n.is_alive(now, ttl)) for n in self.store.nodes(inventories)]

    def node(self, name: str) -> NodeRecord:
        """Node ``name``'s record; UnknownNode or NodeUnavailable unless it answers."""
        check_node_name(name)
        rec = self.store.node(name)
        if rec is None:
            raise UnknownNode(name, [n.name for n in self.store.nodes(())])
        now = time.time()
        if not rec.is_alive(now, self.settings.node_ttl_s):
            raise NodeUnavailable(
                f"node {name} is not answering (last seen "
                f"{now - rec.last_seen:.0f} s ago): is "
                f"`ferry worker --node {name}` running?"
            )
        return replace(rec, alive=True)

    def containers(self) -> list[dict[str, Any]]:
        """Every container on every node, as the nodes last reported them."""
        return [{**encode(c), "node": n.name} for n in self.nodes() for c in n.containers]

    def locate(self, name: str) -> str:
        """The node that runs container ``name``."""
        check_container_name(name)
        for c in self.containers():
            if c["name"] == name and c["state"] != "exited":
                return str(c["node"])
        raise UnknownContainer(name)

    # -- migrations ------------------------------------------------------------
    def submit(self, req: MigrationRequest, seen_on: str | None = None, here: bool = False) -> str:
        """Admit ``req`` (tasks.core.admission), store its record and start it; its id.

        ``seen_on``: the node the caller saw the container on (an evacuation's drained
        node): only its record is read where the container still runs there. ``here``:
        the caller is the coordinator (the evacuation runner), which starts it at once
        instead of through ``ferry.control`` (a start applied twice changes nothing).
        """
        check_container_name(req.container)
        check_node_name(req.to)
        if req.evacuation:
            check_evac_id(req.evacuation)
        there = self.node(check_node_name(seen_on)) if seen_on else None
        seen = there.container(req.container) if there else None
        src = (
            there.name if there and seen and seen.state != "exited" else self.locate(req.container)
        )
        rate, source = self.link(src, req.to)
        dumped = self.store.dump_rate(src)
        fresh = dumped is not None and time.time() - dumped[1] < LINK_TTL_S
        defaults = replace(
            self.defaults,
            link_bps=rate,
            link_source=source,
            dump_bps=dumped[0] if dumped and fresh else None,
        )
        src_rec = there if there and src == there.name else self.node(src)
        admitted = admit(req, src_rec, self.node(req.to), defaults)
        asked_for = src_rec.container(req.container)
        started = asked_for.started if asked_for else None
        options = replace(admitted.options, container_started=started)
        if not self.store.coordinator_alive():
            raise NodeUnavailable("no coordinator is running: start `ferry coordinator`")
        now, mid, strategy = time.time(), new_id(), admitted.strategy
        m = Migration(
            id=mid,
            container=req.container,
            src=src,
            dst=req.to,
            strategy=strategy,
            asked=str(admitted.asked),
            lazy=strategy.lazy,
            sync=admitted.sync,
            limits=admitted.limits,
            options=options,
            reason=admitted.reason,
            created=now,
            updated=now,
            mac=auth.sign(
                self.secret,
                "migration",
                mid,
                req.container,
                src,
                req.to,
                strategy,
                list(admitted.sync),
            ),
        )
        self.store.create(m)
        if here:
            start(self.app, self.store, mid)
        else:
            self.app.send_task("ferry.control.start", args=(m.id,), queue=CONTROL_QUEUE)
        return mid

    def link(self, src: str, dst: str) -> tuple[float, str]:
        """The rate to plan ``src`` -> ``dst`` with (bytes/s), and where it comes from:
        what the pair's last big transfer measured, else the configured ``link_bps``."""
        got = self.store.link(src, dst)
        now = time.time()
        if got is not None and now - got[1] < LINK_TTL_S:
            return got[0], f"measured {now - got[1]:.0f} s before"
        return self.settings.link_bps, "configured (link_bps: this pair was never measured)"

    def measured_links(self) -> dict[tuple[str, str], float]:
        """The rate each link measured (bytes/s, by (src, dst)), where it is fresh."""
        now = time.time()
        return {k: bps for k, (bps, at) in self.store.links().items() if now - at < LINK_TTL_S}

    def fastest_link_from(self, src: str) -> float:
        """The fastest measured link out of ``src``, else the configured ``link_bps``."""
        rates = [self.link(src, n.name)[0] for n in self.store.nodes(()) if n.name != src]
        return max(rates, default=self.settings.link_bps)

    @property
    def defaults(self) -> Defaults:
        """What every migration of this cluster starts from (its settings)."""
        s = self.settings
        return Defaults(
            s.link_bps, s.freeze_overhead_ms, s.timeout_action, s.page_server, s.compression
        )

    def status(self, mid: str) -> Migration:
        return self.store.get(check_migration_id(mid))

    def cancel(self, mid: str) -> Migration:
        """Roll ``mid`` back; TooLate once it is past its point of no return."""
        m = self.status(mid)
        if m.state.final:
            raise BadRequest(f"{mid} is already {m.state.value}")
        if m.past_no_return:
            raise TooLate(f"{mid} is past its point of no return: it will finish on {m.dst}")
        self.app.send_task("ferry.control.cancel", args=(mid,), queue=CONTROL_QUEUE)
        return m


def start(app: Celery, store: Store, mid: str) -> Migration:
    """Start migration ``mid`` (its record exists, PENDING): its first steps are sent."""
    m, sends, _ = store.apply(mid, Event("start", time.time()))
    dispatch(app, mid, sends)
    return m
