"""A cluster as the control side drives it: its nodes, and submitting and cancelling
migrations.

Everything that starts a migration goes through :meth:`Cluster.submit` (the
Python API's ``Ferry.migrate`` and the evacuation runner alike), so every
request is checked the same way: names, both nodes alive and able, the
strategy the chooser picks, a coordinator to drive it.
"""

from __future__ import annotations

import time
from typing import Any

from celery import Celery

from tasks.config.broker import connect, resolve
from tasks.config.settings import Settings
from tasks.core.chooser import Link, Request, Workload, choose, strategy_refusal
from tasks.core.chooser import page_server as use_page_server
from tasks.core.convergence import Limits
from tasks.core.machine import Migration
from tasks.core.nodes import alive, caps
from tasks.core.options import Options
from tasks.core.strategy import Strategy
from tasks.core.transport import check_compression
from tasks.messaging import auth
from tasks.messaging.app import CONTROL_QUEUE, make_app
from tasks.store.migrations import Store
from workers.errors import (
    BadRequest,
    CapabilityError,
    NodeUnavailable,
    TooLate,
    UnknownContainer,
    UnknownNode,
)
from workers.ids import check_container_name, check_migration_id, check_node_name, new_id


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
    def nodes(self) -> list[dict[str, Any]]:
        """Every registered node, with ``alive`` from its heartbeat."""
        now = time.time()
        return [{**n, "alive": alive(n, now, self.settings.node_ttl_s)} for n in self.store.nodes()]

    def node(self, name: str) -> dict[str, Any]:
        """Node ``name``'s record; UnknownNode or NodeUnavailable unless it answers."""
        check_node_name(name)
        rec = self.store.node(name)
        if rec is None:
            raise UnknownNode(name, [n["name"] for n in self.store.nodes()])
        now = time.time()
        rec["alive"] = alive(rec, now, self.settings.node_ttl_s)
        if not rec["alive"]:
            raise NodeUnavailable(
                f"node {name} is not answering (last seen "
                f"{now - rec.get('last_seen', 0):.0f} s ago): is "
                f"`ferry worker --node {name}` running?"
            )
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

    # -- migrations ------------------------------------------------------------
    def submit(
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
    ) -> str:
        """Check and store a migration of ``container`` to ``to``, start it; its id.

        The options are ``Ferry.migrate``'s (see there).
        """
        check_container_name(container)
        check_node_name(to)
        limits = Limits(
            max_iterations=max_iterations,
            goal_unchanged=goal_unchanged,
            downtime_limit_ms=downtime_limit_ms,
            fallback=fallback,  # type: ignore[arg-type]
            hard_downtime_cap=hard_downtime_cap,
        )
        src = self.locate(container)
        if src == to:
            raise BadRequest(f"{container} already runs on {to}")
        dst_rec, src_rec = self.node(to), self.node(src)
        src_caps, dst_caps = caps(src_rec), caps(dst_rec)
        for node in (src_caps, dst_caps):
            if not node.criu_ok:
                raise CapabilityError(f"{node.name} cannot run CRIU: {node.criu_reason}")
        held = next(c for c in src_rec["containers"] if c["name"] == container)
        memory, sync = held["memory_bytes"], list(held.get("sync", ()))
        if bandwidth_bps is not None and not 0 < bandwidth_bps < float("inf"):  # NaN too
            raise BadRequest(f"bandwidth must be > 0 bytes/s and finite, not {bandwidth_bps}")
        link = min(self.settings.link_bps, bandwidth_bps or self.settings.link_bps)
        choice = choose(
            src_caps,
            dst_caps,
            Workload(memory),
            Link(link, overhead_ms=self.settings.freeze_overhead_ms),
            Request(strategy, downtime_limit_ms),
        )
        compression = compression or self.settings.compression
        check_compression(compression)
        pages, pages_why = use_page_server(
            page_server or self.settings.page_server, choice.strategy, src_caps, dst_caps
        )
        if not self.store.coordinator_alive():
            raise NodeUnavailable("no coordinator is running: start `ferry coordinator`")
        now = time.time()
        options = Options(
            memory_bytes=memory,
            timeout_action=self.settings.timeout_action,
            page_server=pages,
            page_server_why=pages_why,
            link_bps=self.settings.link_bps,
            compression=compression,
            lazy_ok=strategy_refusal(Strategy.POSTCOPY, src_caps, dst_caps) is None,
            bandwidth_bps=bandwidth_bps,  # tasks.node.dataplane caps each transfer with it
        )
        m_id = new_id()
        m = Migration(
            id=m_id,
            container=container,
            src=src,
            dst=to,
            strategy=choice.strategy,
            lazy=choice.strategy.lazy,
            sync=tuple(sync),
            limits=limits,
            options=options,
            reason=choice.reason,
            created=now,
            updated=now,
            mac=auth.sign(
                self.secret, "migration", m_id, container, src, to, choice.strategy, sync
            ),
        )
        self.store.create(m)
        self.app.send_task("ferry.control.start", args=(m.id,), queue=CONTROL_QUEUE)
        return m_id

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
