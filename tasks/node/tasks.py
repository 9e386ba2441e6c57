"""A node's Celery tasks: thin wrappers around tasks.node.phases and the runtime.

Each phase task takes ``(migration_id, step)``, checks that the record
still waits for exactly that phase and step on this node (a redelivered or
overtaken task changes nothing), runs the phase, maps errors to transient or
permanent, and feeds the outcome to the state machine. When the next step is
another urgent step on this same node (dump -> transfer), it runs it at once
in this worker instead of a round trip through the queue: that is time inside
the container's freeze window.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from celery.signals import task_failure

from tasks.core import transport
from tasks.core.migration import ROUTE, Event, Migration, Phase, State
from tasks.messaging import auth
from tasks.messaging.app import dispatch, tell_evacuation
from tasks.node.context import NodeContext
from tasks.node.handlers import HANDLERS
from tasks.store.migrations import Store
from workers import failpoints
from workers.errors import BadRequest, FerryError, Superseded, TokenError, TransientError
from workers.ids import check_container_name, check_migration_id
from workers.runtimes.oci import OciRuntime

if TYPE_CHECKING:
    from celery import Celery, Task

log = logging.getLogger("ferry.node")


def _expects(m: Migration, phase: Phase, step: int) -> bool:
    if m.state is State.ROLLING_BACK:
        return phase in m.rollback
    if m.state is State.ROLLED_BACK:
        return phase is Phase.ABORT  # a late abort still tidies the destination
    return m.state is State.RUNNING and m.phase is phase and m.step == step


def run_phase(
    app: Celery,
    store: Store,
    ctx: NodeContext,
    phase: Phase,
    mid: str,
    step: int,
    task: Task | None = None,
    urgent: bool = False,
    max_deliveries: int = 3,
    after: Callable[[], None] = lambda: None,
) -> dict[str, Any]:
    """Run one phase for one migration on this node and advance the machine."""
    check_migration_id(mid)
    if not isinstance(step, int) or isinstance(step, bool) or step < 1:
        raise BadRequest(f"bad step {step!r}")
    while True:
        m = store.get(mid)
        side, _ = ROUTE[phase]
        if (m.src if side == "src" else m.dst) != ctx.node:
            raise BadRequest(
                f"{phase.value} of {mid} belongs on {m.src if side == 'src' else m.dst}, "
                f"not {ctx.node}"
            )
        auth.verify(
            ctx.secret,
            m.mac,
            "migration",
            m.id,
            m.container,
            m.src,
            m.dst,
            m.strategy,
            list(m.sync),
        )
        if not _expects(m, phase, step):
            log.info(
                "%s %s step %s: stale, ignored (record at %s/%s step %s)",
                mid,
                phase.value,
                step,
                m.state.value,
                m.phase.value if m.phase else "-",
                m.step,
            )
            return {"ignored": True}
        if store.delivery(mid, phase.value, step) > max_deliveries:
            ev = Event(
                "failed",
                time.time(),
                phase,
                step,
                error=f"delivered more than {max_deliveries} times; giving up",
            )
        else:
            ev = _attempt(store, ctx, phase, m, step, task)
        if ev.kind == "done":  # what it measured, for the next migration's choice
            rate = transport.measured_bps(phase.value, ev.result)
            if rate is not None:
                store.note_link(m.src, m.dst, rate, time.time())
            dump = transport.measured_dump_bps(phase.value, ev.result)
            if dump is not None:
                store.note_dump_rate(m.src, dump, time.time())
        m, sends, changed = store.apply(mid, ev)
        if changed:
            tell_evacuation(app, m, store.evacuations)
        try:
            after()  # the node's published inventory; the outcome is recorded already
        # a broker blip must not lose a phase's outcome; the next heartbeat republishes
        except Exception:
            log.exception("%s: publishing %s's inventory failed", mid, ctx.node)
        inline = [s for s in sends if s.node == ctx.node and s.urgent == urgent and not s.countdown]
        dispatch(app, mid, [s for s in sends if s not in inline])
        if len(inline) != 1:
            dispatch(app, mid, inline)
            return {"state": m.state.value, "phase": m.phase.value if m.phase else None}
        phase, step = inline[0].phase, inline[0].step


def _attempt(
    store: Store, ctx: NodeContext, phase: Phase, m: Migration, step: int, task: Task | None
) -> Event:
    def progress(numbers: dict[str, Any]) -> None:
        now = store.update(m.id, lambda r: _with_progress(r, phase, numbers), "progress")
        if now.step != m.step or now.state is not State.RUNNING:
            # Cancelled, timed out or superseded: stop sending, free this slot
            # for the rollback steps queued behind it.
            raise Superseded(f"{m.id} moved on ({now.state.value}); {phase.value} stops")
        _tell_flower(task, m, phase, numbers)

    _tell_flower(task, m, phase, {})
    started = time.time()
    failpoints.hit(ctx.failpoints, phase.value, "before", m.id)
    try:
        result = HANDLERS[phase](ctx, m, progress)
        failpoints.hit(ctx.failpoints, phase.value, "after", m.id)
    except TransientError as exc:
        return Event("failed", time.time(), phase, step, error=str(exc), transient=True)
    except FerryError as exc:
        return Event("failed", time.time(), phase, step, error=str(exc))
    except Exception as exc:  # a bug or an OS error we did not map: roll back, say what
        log.exception("%s %s failed unexpectedly", m.id, phase.value)
        return Event("failed", time.time(), phase, step, error=f"{type(exc).__name__}: {exc}")
    result["started"] = started
    return Event("done", time.time(), phase, step, result=result)


def _tell_flower(task: Task | None, m: Migration, phase: Phase, numbers: dict[str, Any]) -> None:
    """A ``task-progress`` event: Flower shows the task as PROGRESS, with ``result`` saying where."""
    if task is None or not task.request.id:
        return
    # Flower's task pages show only Celery's own fields; ``result`` is the one a
    # custom state (PROGRESS) fills, until the task's real result replaces it.
    text = f"{phase.value} of {m.container} ({m.src} -> {m.dst}, {m.strategy})"
    if numbers.get("bytes_total"):
        text += (
            f": {numbers['bytes_sent'] / 2**20:.1f} of {numbers['bytes_total'] / 2**20:.1f} MiB"
            f" at {numbers.get('rate_bps', 0) / 2**20:.1f} MiB/s"
        )
        if numbers.get("eta_s") is not None:
            text += f", ETA {numbers['eta_s']:.0f} s"
    task.send_event("task-progress", migration=m.id, phase=phase.value, result=text, **numbers)


def _with_progress(m: Migration, phase: Phase, numbers: dict[str, Any]) -> Migration:
    return replace(m, results={**m.results, "progress": {"phase": phase.value, **numbers}})


def register(
    app: Celery, store: Store, ctx: NodeContext, urgent: bool, on_inventory: Callable[[], None]
) -> None:
    """Register this node's tasks on ``app``."""
    task_failure.connect(_refused, weak=False, dispatch_uid="ferry.node.refused")
    for phase in HANDLERS:
        _register_phase(app, store, ctx, phase, urgent, on_inventory)

    @app.task(name="ferry.node.run", bind=True, throws=(FerryError,))
    def run(
        self: Task,
        name: str,
        argv: list[str],
        labels: dict[str, str],
        sync: list[str],
        net: str,
        issued: float,
        mac: str,
    ) -> dict[str, Any]:
        check_container_name(name)
        if not isinstance(argv, list) or not all(isinstance(a, str) for a in argv):
            raise BadRequest("argv must be a list of strings")
        if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
            raise BadRequest("labels must map names to strings")
        if not isinstance(sync, list) or not all(isinstance(d, str) for d in sync):
            raise BadRequest("sync must be a list of paths")
        if not isinstance(net, str):
            raise BadRequest("net must be an address, ADDR/PREFIX")
        auth.verify_fresh(
            ctx.secret, mac, issued, time.time(), "run", ctx.node, name, argv, labels, sync, net
        )
        if ctx.runtime.name != "oci" and any(k.startswith("oci.") for k in labels):
            raise BadRequest(
                f"--rootfs and --memory need an oci node; {ctx.node} runs {ctx.runtime.name}"
            )
        once(store, ctx.node, "run", name, mac)
        info = ctx.runtime.start(name, argv, labels, tuple(sync), net)
        on_inventory()
        return {"name": info.name, "node": ctx.node, "pid": info.pid, "log": info.log}

    @app.task(name="ferry.node.kill", bind=True, throws=(FerryError,))
    def kill(self: Task, name: str, issued: float, mac: str) -> dict[str, Any]:
        auth.verify_fresh(
            ctx.secret, mac, issued, time.time(), "kill", ctx.node, check_container_name(name)
        )
        once(store, ctx.node, "kill", name, mac)
        ctx.runtime.kill(name)
        on_inventory()
        return {"name": name, "node": ctx.node, "killed": True}

    @app.task(name="ferry.node.adopt", bind=True, throws=(FerryError,))
    def adopt(self: Task, ref: str, issued: float, mac: str) -> dict[str, Any]:
        """Take an engine's container (``podman:NAME``, ``runc:ID``) into the inventory."""
        if not isinstance(ref, str):
            raise BadRequest("adopt wants ENGINE:NAME")
        auth.verify_fresh(ctx.secret, mac, issued, time.time(), "adopt", ctx.node, ref)
        runtime = ctx.runtime
        if not isinstance(runtime, OciRuntime):
            raise BadRequest(f"adopt needs an oci node; {ctx.node} runs {runtime.name}")
        once(store, ctx.node, "adopt", ref, mac)
        info = runtime.adopt(ref)
        on_inventory()
        return {"name": info.name, "node": ctx.node, "pid": info.pid, "state": info.state}

    @app.task(name="ferry.node.release", bind=True, throws=(FerryError,))
    def release(self: Task, name: str, issued: float, mac: str) -> dict[str, Any]:
        """Forget an adopted container; it runs on, its engine's alone."""
        auth.verify_fresh(
            ctx.secret, mac, issued, time.time(), "release", ctx.node, check_container_name(name)
        )
        runtime = ctx.runtime
        if not isinstance(runtime, OciRuntime):
            raise BadRequest(f"{ctx.node} runs {runtime.name}: it adopts nothing to release")
        once(store, ctx.node, "release", name, mac)
        info = runtime.release(name)
        on_inventory()
        return {"name": name, "node": ctx.node, "pid": info.pid, "released": True}

    @app.task(name="ferry.node.continue", bind=True, throws=(FerryError,))
    def continue_(self: Task, name: str, issued: float, mac: str) -> dict[str, Any]:
        """Continue a frozen copy (``ferry resolve``); a running one is left as it is."""
        auth.verify_fresh(
            ctx.secret, mac, issued, time.time(), "continue", ctx.node, check_container_name(name)
        )
        once(store, ctx.node, "continue", name, mac)
        info = ctx.runtime.resume(name)
        on_inventory()
        return {"name": name, "node": ctx.node, "pid": info.pid, "state": info.state}


def _refused(sender: Task | None = None, exception: BaseException | None = None, **_: Any) -> None:
    """A task that refused (a FerryError: bad input, a stale signature) logs one line;
    its tasks declare ``throws`` so that Celery keeps the traceback for real bugs."""
    if isinstance(exception, FerryError) and sender is not None:
        log.warning("%s refused: %s", sender.name, exception)


def once(store: Store, node: str, kind: str, name: str, mac: str) -> None:
    """Refuse a signed command that already ran here (its MAC, fresh for
    auth.MAX_AGE_S, is its nonce): a captured ``kill`` replayed must not kill the
    next container of that name."""
    if not store.first_use(node, mac, auth.MAX_AGE_S + 60):
        log.warning("refused a replayed %s of %s on %s", kind, name, node)
        raise TokenError(f"refused: a replay of a {kind} command that already ran on {node}")


def _register_phase(
    app: Celery,
    store: Store,
    ctx: NodeContext,
    phase: Phase,
    urgent: bool,
    after: Callable[[], None],
) -> None:
    def body(self: Task, mid: str, step: int) -> dict[str, Any]:
        return run_phase(app, store, ctx, phase, mid, step, self, urgent, after=after)

    body.__name__ = phase.value
    body.__doc__ = f"The {phase.value} phase of a migration, on {ctx.node}."
    app.task(name=f"ferry.node.{phase.value}", bind=True, throws=(FerryError,))(body)
