"""The coordinator: control tasks on ``ferry.control``.

It starts and cancels migrations by feeding the state machine; node tasks
advance it from there. It never waits on a task's result.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from celery import Celery, Task

from tasks.app import CONTROL_QUEUE, make_app
from tasks.broker import connect, resolve
from tasks.machine import Event
from tasks.node import dispatch
from tasks.settings import Settings
from tasks.store import Store
from workers.errors import TooLate

HEARTBEAT_KEY = "ferry:coordinator"


def register(app: Celery, store: Store) -> None:
    """Register the control tasks on ``app``."""

    @app.task(name="ferry.control.start", bind=True)
    def start(self: Task, mid: str) -> dict[str, Any]:
        """Start migration ``mid`` (its record exists, PENDING)."""
        m, sends, _ = store.apply(mid, Event("start", time.time()))
        dispatch(app, mid, sends)
        return {"migration": mid, "state": m.state.value}

    @app.task(name="ferry.control.cancel", bind=True)
    def cancel(self: Task, mid: str) -> dict[str, Any]:
        """Roll migration ``mid`` back, if it is not past its point of no return."""
        m, sends, _ = store.apply(mid, Event("cancel", time.time()))
        if m.past_no_return and not m.state.final:
            raise TooLate(f"{mid} is past its point of no return: it will finish on {m.dst}")
        dispatch(app, mid, sends)
        return {"migration": mid, "state": m.state.value}


def serve(settings: Settings, concurrency: int = 4) -> None:
    """Run the coordinator until stopped."""
    s = resolve(settings)
    app = make_app(s)
    store = Store(connect(s))
    register(app, store)

    def beat() -> None:
        while True:
            store.r.set(HEARTBEAT_KEY, str(time.time()), ex=max(10, int(s.node_ttl_s)))
            time.sleep(s.heartbeat_s)

    threading.Thread(target=beat, daemon=True, name="coordinator-heartbeat").start()
    app.worker_main(["worker", "-Q", CONTROL_QUEUE, "-n", "coordinator@%h", "-P", "threads",
                     "-c", str(concurrency), "-E", "--without-gossip", "--without-mingle",
                     "-l", "INFO"])
