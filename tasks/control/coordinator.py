"""The coordinator: control tasks on ``ferry.control``, evacuation ticks on ``ferry.control.ticks``.

It starts and cancels migrations by feeding the state machine; node tasks
advance it from there. It never waits on a task's result.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from dataclasses import replace
from typing import Any

from celery import Celery, Task

from tasks.config.broker import connect, resolve
from tasks.config.settings import Settings
from tasks.control.cluster import start as start_migration
from tasks.control.evacuation import register as evacuation_tasks
from tasks.core.migration import Event, Migration
from tasks.core.watchdog import Timeouts, check
from tasks.messaging.app import (
    COORDINATOR_QUEUES,
    dispatch,
    make_app,
    tell_evacuation,
    worker_argv,
)
from tasks.store.migrations import Store
from workers.errors import BadRequest, CorruptRecord, TooLate

log = logging.getLogger("ferry.coordinator")


def register(app: Celery, store: Store) -> None:
    """Register the control tasks on ``app``."""
    evacuation_tasks(app, store)

    # No one waits on a control task's result (the record says what happened):
    # the result backend gets only failures.
    @app.task(
        name="ferry.control.start", bind=True, ignore_result=True, store_errors_even_if_ignored=True
    )
    def start(self: Task, mid: str) -> dict[str, Any]:
        """Start migration ``mid`` (its record exists, PENDING)."""
        m = start_migration(app, store, mid)
        return {"migration": mid, "state": m.state.value}

    @app.task(
        name="ferry.control.cancel",
        bind=True,
        ignore_result=True,
        store_errors_even_if_ignored=True,
    )
    def cancel(self: Task, mid: str) -> dict[str, Any]:
        """Roll migration ``mid`` back, if it is not past its point of no return."""
        m, sends, changed = store.apply(mid, Event("cancel", time.time()))
        if changed:
            tell_evacuation(app, m, store.evacuations)
        if m.past_no_return and not m.state.final:
            raise TooLate(f"{mid} is past its point of no return: it will finish on {m.dst}")
        dispatch(app, mid, sends)
        return {"migration": mid, "state": m.state.value}


def sweep(app: Celery, store: Store, timeouts: Timeouts, node_ttl_s: float) -> int:
    """Drive every unfinished migration on: timeouts, lost steps. Returns events applied.

    This is also crash recovery: a restarted coordinator finds the in-flight
    migrations in ``ferry:active`` and drives them to DONE or ROLLED_BACK.
    """
    now = time.time()
    alive, restarted = {}, {}
    for n in store.nodes(()):  # their heartbeats: no inventory
        alive[n.name] = n.is_alive(now, node_ttl_s)
        for role, at in n.workers.items():
            restarted[f"{n.name}/{role}"] = at
    applied = 0
    since = store.restarted(now)
    if since is not None:
        # In flight now, or finished since the coordinator last looked (a busy
        # coordinator may look only after a quick migration is done).
        touched = {m.id for m in store.iter_migrations(200) if m.updated >= since}
        for mid in sorted(touched | set(store.active())):
            try:
                store.update(mid, _noted_restart, "redis-restarted")
            except BadRequest:  # its record is gone
                continue
    for mid in store.active():
        try:
            m = store.get(mid)
        except CorruptRecord as exc:  # reported, skipped: the others go on
            log.error("sweep: %s", exc)
            continue
        except BadRequest:
            continue
        ev = check(m, now, alive, timeouts, restarted)
        if ev is None:
            continue
        m, sends, changed = store.apply(mid, ev)
        if changed:
            log.warning("%s: %s -> %s", mid, ev.error, m.state.value)
            dispatch(app, mid, sends)
            tell_evacuation(app, m, store.evacuations)
            applied += 1
    return applied


def _noted_restart(m: Migration) -> Migration:
    where = m.phase.value if m.phase and not m.state.final else "its last steps"
    return replace(m, warnings=(*m.warnings, f"the state store (Redis) restarted during {where}"))


def serve(settings: Settings, concurrency: int = 4) -> None:
    """Run the coordinator until stopped."""
    s = resolve(settings)
    app = make_app(s)
    store = Store(connect(s, patient=True))
    retention = s.retention  # a bad bound stops the coordinator now
    register(app, store)
    timeouts = Timeouts(
        per_gib_s=s.timeout_per_gib_s,
        min_total_s=s.timeout_min_s,
        progress_s=s.progress_timeout_s,
        node_down_s=s.node_ttl_s,
    )

    def beat() -> None:
        while True:
            try:
                store.beat_coordinator(time.time(), s.node_ttl_s)
                sweep(app, store, timeouts, s.node_ttl_s)
                store.prune(retention, time.time())
            except Exception:  # the beat must outlive a Redis restart; it runs again next time
                log.exception("sweep failed")
            time.sleep(s.heartbeat_s)

    threading.Thread(target=beat, daemon=True, name="coordinator-heartbeat").start()
    print(f"ferry: coordinator up: queues {COORDINATOR_QUEUES}", file=sys.stderr, flush=True)
    app.worker_main(worker_argv(s, COORDINATOR_QUEUES, "coordinator@%h", concurrency))
