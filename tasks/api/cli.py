"""The ``ferry`` command.

Exit codes: 0 ok; 1 the operation failed (a migration rolled back, an
evacuation left containers behind, ...); 2 bad input (nothing was changed,
also: an evacuation refused because a container has no destination); 3 a
broker, node or coordinator is unreachable; 4 gave up waiting (or an
evacuation's timeout ended it). Every command takes ``--json``.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import click
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn
from rich.table import Table

from tasks.api import evacview
from tasks.api.client import Ferry
from tasks.api.demo import run_demo
from tasks.config import broker
from tasks.config.settings import Settings
from tasks.control import coordinator as control
from tasks.control.metrics import command as metrics_command
from tasks.core.summary import one_line, summary
from tasks.messaging.app import make_app
from tasks.node import worker as node_worker
from workers.errors import EXIT_FAILED, EXIT_OK, EXIT_TIMEOUT, FerryError

err = Console(stderr=True)
out = Console()


def _client() -> Ferry:
    return Ferry(Settings.from_env())


def _emit(as_json: bool, data: Any, human: Callable[[], None]) -> None:
    if as_json:
        click.echo(json.dumps(data, default=str, indent=1))
    else:
        human()


class FerryGroup(click.Group):
    """Turns FerryError into ``error: message`` and its documented exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except FerryError as exc:
            err.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
            sys.exit(exc.exit_code)


@click.group(cls=FerryGroup)
def main() -> None:
    """ferry: live-migrate containers between the nodes of a cluster."""


class Positive(click.ParamType[float]):
    """A finite number > 0 (click's FloatRange lets NaN through)."""

    name = "number"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        if not 0 < number < math.inf:
            self.fail(f"{value!r} is not a finite number > 0", param, ctx)
        return number


POSITIVE = Positive()


# Flower's task columns: args are (migration, step); a running phase's result is its progress.
FLOWER_COLUMNS = "name,uuid,state,args,result,received,started,runtime,worker"
json_opt = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")


@main.command()
@click.option("--node", required=True, help="This node's name (lowercase, digits, '-').")
def worker(node: str) -> None:
    """Run this node's workers, data-plane listener and heartbeat."""
    sys.exit(node_worker.serve(Settings.from_env(), node))


@main.command()
@click.option("--concurrency", default=4, show_default=True)
def coordinator(concurrency: int) -> None:
    """Run the coordinator (consumes ferry.control)."""
    control.serve(Settings.from_env(), concurrency)


@main.command(context_settings={"ignore_unknown_options": True})
@click.option("--port", default=5555, show_default=True)
@click.option("--address", default="127.0.0.1", show_default=True)
@click.option(
    "--basic-auth",
    envvar="FERRY_FLOWER_AUTH",
    default="",
    help="user:password (env FERRY_FLOWER_AUTH).",
)
def flower(port: int, address: str, basic_auth: str) -> None:
    """Run Flower on ferry's broker (the tasks page lists each phase's args and progress)."""
    app = make_app(broker.resolve(Settings.from_env()))
    argv = ["flower", f"--port={port}", f"--address={address}", f"--tasks_columns={FLOWER_COLUMNS}"]
    if basic_auth:
        argv.append(f"--basic-auth={basic_auth}")
    app.start(argv)


@main.command()
@json_opt
def nodes(as_json: bool) -> None:
    """List the nodes: capabilities, load, last seen."""
    rows = _client().nodes()

    def show() -> None:
        t = Table(
            "node",
            "state",
            "arch",
            "criu",
            "soft-dirty",
            "uffd",
            "mem free",
            "load",
            "containers",
            "last seen",
            "address",
        )
        now = time.time()
        for n in rows:
            p = n.get("probe", {})
            state = ("up" if n["alive"] else "down") + (" (cordoned)" if n.get("cordoned") else "")
            criu = p.get("criu_version") or ("sim" if p.get("simulated") else "no")
            if p.get("criu_reason"):
                criu += f" ({p['criu_reason']})"
            t.add_row(
                n["name"],
                state,
                p.get("arch", "?"),
                criu,
                _yn(p.get("soft_dirty")),
                _yn(p.get("uffd")),
                _gib(p.get("mem_free_bytes", 0)),
                f"{n.get('load', 0):.2f}",
                str(len(n.get("containers", []))),
                f"{now - n.get('last_seen', 0):.0f}s ago",
                n.get("address", ""),
            )
        out.print(t)

    _emit(as_json, rows, show)


@main.command()
@json_opt
def ps(as_json: bool) -> None:
    """List the containers on every node."""
    rows = _client().containers()

    def show() -> None:
        t = Table("container", "node", "state", "pid", "memory", "synced dirs", "command")
        for c in rows:
            t.add_row(
                c["name"],
                c["node"],
                c["state"],
                str(c["pid"]),
                _gib(c["memory_bytes"]),
                " ".join(c.get("sync", [])) or "-",
                " ".join(c["argv"])[:60],
            )
        out.print(t)

    _emit(as_json, rows, show)


@main.command(context_settings={"ignore_unknown_options": True})
@click.option("--node", required=True)
@click.option("--name", default=None, help="Container name (default: generated).")
@click.option(
    "--sync",
    "sync",
    multiple=True,
    metavar="DIR",
    help="A node-local directory that moves with it (rsync); repeatable. "
    "Absolute, below the node's sync_roots or the container's workdir.",
)
@click.argument("cmd", nargs=-1, required=True, type=click.UNPROCESSED)
@json_opt
def run(
    node: str, name: str | None, sync: tuple[str, ...], cmd: tuple[str, ...], as_json: bool
) -> None:
    """Start CMD on NODE as a container: ferry run --node N [--sync DIR] -- CMD ..."""
    res = _client().run(node, list(cmd), name, sync=sync)
    _emit(
        as_json,
        res,
        lambda: out.print(
            f"{res['name']} runs on {res['node']} (pid {res['pid']}, log {res['log']})"
        ),
    )


@main.command()
@click.argument("container")
@click.option("--to", "to", required=True, help="Destination node.")
@click.option(
    "--strategy",
    default="auto",
    show_default=True,
    type=click.Choice(["auto", "cold", "precopy", "delta", "postcopy", "hybrid"]),
)
@click.option(
    "--downtime-limit",
    "downtime_limit_ms",
    default=300.0,
    show_default=True,
    type=POSITIVE,
    help="ms: pre-copy stops once the expected downtime is under it.",
)
@click.option(
    "--max-iterations",
    default=10,
    show_default=True,
    type=click.IntRange(min=1),
    help="Pre-copy passes at most.",
)
@click.option(
    "--goal",
    "goal_unchanged",
    default=0.70,
    show_default=True,
    help="Stop pre-copy once this share of pages stayed unchanged (LXD's goal).",
)
@click.option(
    "--fallback",
    default="postcopy",
    show_default=True,
    type=click.Choice(["postcopy", "cold", "abort"]),
    help="What to do when pre-copy does not converge.",
)
@click.option("--hard-cap", is_flag=True, help="Never exceed the downtime limit: abort instead.")
@click.option(
    "--page-server",
    type=click.Choice(["auto", "on", "off"]),
    default=None,
    help="Stream a cold dump's pages into the destination's CRIU [setting page_server].",
)
@click.option(
    "--compression",
    type=click.Choice(["auto", "none", "zstd"]),
    default=None,
    help="How image files travel [setting compression].",
)
@click.option("--no-wait", is_flag=True, help="Submit and print the migration id.")
@click.option(
    "--timeout",
    default=600.0,
    show_default=True,
    type=POSITIVE,
    help="s: then stop waiting (exit 4); the migration goes on.",
)
@json_opt
def migrate(
    container: str,
    to: str,
    strategy: str,
    downtime_limit_ms: float,
    max_iterations: int,
    goal_unchanged: float,
    fallback: str,
    hard_cap: bool,
    page_server: str | None,
    compression: str | None,
    no_wait: bool,
    timeout: float,
    as_json: bool,
) -> None:
    """Move CONTAINER to node TO."""

    client = _client()
    handle = client.migrate(
        container,
        to,
        strategy,
        downtime_limit_ms=downtime_limit_ms,
        max_iterations=max_iterations,
        goal_unchanged=goal_unchanged,
        fallback=fallback,
        hard_downtime_cap=hard_cap,
        page_server=page_server,
        compression=compression,
    )
    if no_wait:
        _emit(as_json, {"id": handle.id}, lambda: out.print(handle.id))
        return
    if not as_json:
        err.print(f"{handle.id}: {container} -> {to}", highlight=False)
    try:
        m = _follow(client, handle, timeout, quiet=as_json)
    except TimeoutError as exc:
        err.print(f"[yellow]{exc}[/yellow]")
        sys.exit(EXIT_TIMEOUT)
    _emit(as_json, summary(m), lambda: out.print(one_line(m), highlight=False))
    sys.exit(EXIT_OK if m.state.value == "done" else EXIT_FAILED)


def _follow(client: Any, handle: Any, timeout: float, quiet: bool) -> Any:

    if quiet:
        return handle.wait(timeout)
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        console=err,
        transient=True,
    ) as bar:
        task = bar.add_task("submitted", total=None)
        deadline = time.monotonic() + timeout
        while True:
            m = client.status(handle.id)
            p = m.results.get("progress", {})
            bar.update(
                task,
                description=f"{m.state.value}: {m.phase.value if m.phase else ''}",
                completed=p.get("bytes_sent", 0),
                total=p.get("bytes_total") or None,
            )
            if m.state.final:
                return m
            if time.monotonic() > deadline:
                raise TimeoutError(f"{handle.id} still {m.state.value} after {timeout:.0f} s")
            time.sleep(0.1)


@main.command()
@click.argument("migration", required=False)
@json_opt
def status(migration: str | None, as_json: bool) -> None:
    """Show one migration's record, or the latest migrations."""

    client = _client()
    if migration:
        m = client.status(migration)
        data = {**asdict(m), "summary": summary(m)}

        def show_one() -> None:
            s = summary(m)
            t = Table("field", "value", show_header=False)
            for k in ("id", "container", "src", "dst", "strategy", "state"):
                t.add_row(k, str(s[k]))
            t.add_row("why", m.reason)
            for i, p in enumerate(m.passes, 1):
                t.add_row(
                    f"pass {i}",
                    f"{p['bytes_sent'] / 2**20:.1f} MiB in {p['seconds']:.2f} s, "
                    f"{p['pages_written']}/{p['pages_total']} pages changed, "
                    f"freeze {p['freeze_ms']:.0f} ms, dirty {p['dirty_rate_bps'] / 2**20:.1f} MiB/s",
                )
            if "decision" in m.results:
                t.add_row("stop rule", m.results["decision"]["reason"])
            for w in m.warnings:
                t.add_row("warning", w)
            for phase in ("sync", "final_sync"):
                if phase in m.results:
                    r = m.results[phase]
                    t.add_row(
                        phase.replace("_", " "),
                        f"{r['bytes'] / 2**20:.2f} MiB, {r['files']} files, "
                        f"{r['deleted']} deleted, in {r['wall_ms']:.0f} ms ({r['dirs']} dirs)",
                    )
            t.add_row("phase", f"{m.phase.value if m.phase else '-'} (attempt {m.attempt})")
            for k in (
                "downtime_ms",
                "criu_freeze_ms",
                "delta_ms",
                "wire_ms",
                "fsync_ms",
                "rebuild_ms",
                "restore_ms",
                "overhead_ms",
            ):
                if k in s:
                    t.add_row(k.replace("_ms", " (ms)"), str(s[k]))
            t.add_row("total (s)", str(s["total_s"]))
            t.add_row("bytes", str(s["bytes"]))
            for e in m.errors:
                t.add_row("error", e)
            out.print(t)

        _emit(as_json, data, show_one)
        return
    rows = [summary(m) for m in client.migrations()]

    def show_all() -> None:
        t = Table("id", "container", "from", "to", "strategy", "state", "downtime", "total")
        for s in rows:
            t.add_row(
                s["id"],
                s["container"],
                s["src"],
                s["dst"],
                s["strategy"],
                s["state"],
                f"{s['downtime_ms']:.0f} ms" if "downtime_ms" in s else "-",
                f"{s['total_s']:.2f} s",
            )
        out.print(t)

    _emit(as_json, rows, show_all)


@main.command()
@click.argument("migration")
@json_opt
def watch(migration: str, as_json: bool) -> None:
    """Print a migration's events as they happen."""
    for ev in _client().watch(migration):
        if as_json:
            click.echo(json.dumps(ev))
        else:
            out.print(
                f"{ev['state']:>12} {ev['phase']:<9} {ev['what']:<9} {ev.get('error', '')}",
                highlight=False,
            )


@main.command()
@click.argument("migration")
@json_opt
def cancel(migration: str, as_json: bool) -> None:
    """Roll a migration back (before its point of no return), or stop an evacuation (e-...)."""
    client = _client()
    if migration.startswith("e-"):
        client.evacuation(migration).cancel()
    else:
        client.cancel(migration)
    _emit(
        as_json,
        {"id": migration, "cancel": "requested"},
        lambda: out.print(f"{migration}: cancel requested"),
    )


@main.command()
@click.argument("target")
@click.option(
    "--keep",
    required=True,
    metavar="WHERE",
    help="source or destination (for a migration), or a node (for a container).",
)
@click.option(
    "--force", is_flag=True, help="Nodes that do not answer run no copy (they are off, or wiped)."
)
@json_opt
def resolve(target: str, keep: str, force: bool, as_json: bool) -> None:
    """Keep one copy of a split container (continued if frozen) and kill the others.

    TARGET is a FAILED migration (m-...; --keep source|destination) or a
    container (--keep NODE), e.g. after Redis lost its records.
    """
    s = _client().resolve(target, keep, force)
    _emit(
        as_json,
        {"target": target, "keep": s.keep, "killed": list(s.kill), "note": s.note},
        lambda: out.print(f"{target}: {s.note}", highlight=False),
    )


@main.command()
@click.argument("node")
@json_opt
def cordon(node: str, as_json: bool) -> None:
    """Mark NODE so that nothing new lands on it."""
    _client().cordon(node)
    _emit(as_json, {"node": node, "cordoned": True}, lambda: out.print(f"{node} cordoned"))


@main.command()
@click.argument("node")
@json_opt
def uncordon(node: str, as_json: bool) -> None:
    """Let containers land on NODE again."""
    _client().uncordon(node)
    _emit(as_json, {"node": node, "cordoned": False}, lambda: out.print(f"{node} uncordoned"))


@main.command()
@click.argument("node", required=False)
@click.option("--to", default=None, help="Comma-separated destinations (default: any that fits).")
@click.option("--dry-run", is_flag=True, help="Show the plan; cordon nothing, move nothing.")
@click.option(
    "--max-parallel",
    default=4,
    show_default=True,
    type=click.IntRange(min=1),
    help="Migrations at once, in all.",
)
@click.option(
    "--per-node",
    default=2,
    show_default=True,
    type=click.IntRange(min=1),
    help="Migrations at once into one node, and out of one node.",
)
@click.option("--bandwidth", default=None, help="Cap per migration, bytes/s: 50M, 64Mi, 800mbit.")
@click.option(
    "--strategy",
    default="auto",
    show_default=True,
    type=click.Choice(["auto", "cold", "precopy", "delta", "postcopy", "hybrid"]),
)
@click.option(
    "--timeout",
    type=POSITIVE,
    default=None,
    help="s: then start no more moves and roll back those that still can.",
)
@click.option(
    "--allow-partial",
    is_flag=True,
    help="Move what has a destination even if some containers have none.",
)
@click.option(
    "--cancel",
    "cancel_id",
    default=None,
    metavar="EVAC_ID",
    help="Stop evacuation EVAC_ID from starting more moves.",
)
@click.option("--no-wait", is_flag=True, help="Start and print the evacuation id.")
@json_opt
def evacuate(
    node: str | None,
    to: str | None,
    dry_run: bool,
    max_parallel: int,
    per_node: int,
    bandwidth: str | None,
    strategy: str,
    timeout: float | None,
    allow_partial: bool,
    cancel_id: str | None,
    no_wait: bool,
    as_json: bool,
) -> None:
    """Move every container off NODE, which is cordoned first and stays cordoned.

    Containers with no destination are shown before anything moves, and then
    nothing moves unless --allow-partial. Exit codes: 0 every container moved;
    1 some failed, rolled back, were not placed or not started (they still run
    on NODE); 2 bad input, or a container has no destination (nothing moved);
    3 a node or the coordinator is unreachable; 4 the timeout ended it.
    """
    targets = [t.strip() for t in to.split(",") if t.strip()] if to is not None else None
    if not node and not cancel_id:
        raise click.UsageError("give the NODE to evacuate (or --cancel EVAC_ID)")
    sys.exit(
        evacview.run(
            _client(),
            node,
            cancel_id,
            as_json,
            no_wait,
            out,
            err,
            to=targets,
            dry_run=dry_run,
            max_parallel=max_parallel,
            per_node=per_node,
            bandwidth=bandwidth,
            strategy=strategy,
            timeout=timeout,
            allow_partial=allow_partial,
        )
    )


@main.command()
@click.option("--nodes", "count", default=3, show_default=True)
@click.option("--keep", is_flag=True, help="Leave the demo cluster running.")
@click.option("--flower-port", default=5555, show_default=True)
def demo(count: int, keep: bool, flower_port: int) -> None:
    """Migrate a counting container across a cluster of nodes on this machine."""
    sys.exit(run_demo(count, keep, flower_port))


def _yn(v: Any) -> str:
    return "yes" if v else "no"


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


main.add_command(metrics_command)  # `ferry metrics`: defined beside its collector

if __name__ == "__main__":
    main()
