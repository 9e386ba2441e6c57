"""``ferry`` commands about migrations: migrate, status, watch, cancel, resolve."""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import click
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn
from rich.table import Table

from tasks.api.console import POSITIVE, emit, err, ferry_client, json_opt, out, table
from tasks.core.codec import encode
from tasks.core.evacplan import parse_rate
from tasks.core.summary import event_line, one_line, size, summary
from workers.errors import EXIT_FAILED, EXIT_OK, EXIT_TIMEOUT


@click.command()
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
@click.option(
    "--bandwidth", default=None, help="Cap on its transfers, bytes/s: 50M, 64Mi, 800mbit."
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
    bandwidth: str | None,
    no_wait: bool,
    timeout: float,
    as_json: bool,
) -> None:
    """Move CONTAINER to node TO."""

    client = ferry_client()
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
        bandwidth_bps=parse_rate(bandwidth),
    )
    if no_wait:
        emit(as_json, {"id": handle.id}, lambda: out.print(handle.id))
        return
    if not as_json:
        err.print(f"{handle.id}: {container} -> {to}", highlight=False)
    try:
        m = _follow(client, handle, timeout, quiet=as_json)
    except TimeoutError as exc:
        err.print(f"[yellow]{exc}[/yellow]")
        sys.exit(EXIT_TIMEOUT)
    emit(as_json, summary(m), lambda: out.print(one_line(m), highlight=False))
    sys.exit(EXIT_OK if m.state.value == "done" else EXIT_FAILED)


def _follow(client: Any, handle: Any, timeout: float, quiet: bool) -> Any:

    if quiet:
        return handle.wait(timeout)
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(binary_units=True),
        TextColumn("{task.fields[rate]}"),
        console=err,
        transient=True,
    ) as bar:
        task = bar.add_task("submitted", total=None, rate="")
        deadline = time.monotonic() + timeout
        while True:
            m = client.status(handle.id)
            p = m.results.get("progress", {})
            bar.update(
                task,
                description=f"{m.state.value}: {m.phase.value if m.phase else ''}",
                completed=p.get("bytes_sent", 0),
                total=p.get("bytes_total") or None,
                rate=f"{size(p['rate_bps'])}/s" if p.get("rate_bps") else "",
            )
            if m.state.final:
                return m
            if time.monotonic() > deadline:
                raise TimeoutError(f"{handle.id} still {m.state.value} after {timeout:.0f} s")
            time.sleep(0.1)


STATES = ("pending", "running", "rolling_back", "done", "rolled_back", "failed", "cancelled")


@click.command()
@click.argument("migration", required=False)
@click.option(
    "--state", "states", multiple=True, type=click.Choice(STATES), help="Only these; repeatable."
)
@click.option(
    "--limit", default=20, show_default=True, type=click.IntRange(min=1), help="The latest N."
)
@click.option("--all", "every", is_flag=True, help="Every migration kept, not only the latest.")
@json_opt
def status(
    migration: str | None, states: tuple[str, ...], limit: int, every: bool, as_json: bool
) -> None:
    """Show one migration's record, or the latest migrations (--state running: in flight)."""

    client = ferry_client()
    if migration:
        m = client.status(migration)
        data = {**encode(m), "summary": summary(m)}

        def show_one() -> None:
            s = summary(m)
            t = Table("field", "value", show_header=False)
            for k in ("id", "container", "src", "dst", "asked", "strategy", "state"):
                t.add_row(k, str(s[k]))
            t.add_row("why", m.reason)
            for f in s["fallbacks"]:
                t.add_row("fallback", f)
            for i, p in enumerate(m.passes, 1):
                t.add_row(
                    f"pass {i}",
                    f"{size(p['bytes_sent'])} in {p['seconds']:.2f} s, "
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
                        f"{size(r['bytes'])}, {r['files']} files, "
                        f"{r['deleted']} deleted, in {r['wall_ms']:.0f} ms ({r['dirs']} dirs)",
                    )
            t.add_row("phase", f"{m.phase.value if m.phase else '-'} (attempt {m.attempt})")
            for pause in (p for p in m.pauses if p.phase != "fault"):
                t.add_row(f"pause ({pause.phase})", f"{pause.ms:.0f} ms")
            waits = [p.ms for p in m.pauses if p.phase == "fault"]
            if waits:
                t.add_row("pauses (faults)", f"{len(waits)}, the longest {max(waits):.0f} ms")
            for k in (
                "downtime_ms",
                "paused_total_ms",
                "degraded_ms",
                "faults",
                "fault_wait_ms",
                "first_faults_ms",
                "final_pause_ms",
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
            for k in ("bytes_passes", "bytes_final", "bytes_lazy", "sync_bytes", "bytes"):
                if s[k] or k == "bytes":
                    t.add_row(k.replace("_", " "), size(s[k]))
            for e in s["errors"]:
                t.add_row("error", e)
            out.print(t)

        emit(as_json, data, show_one)
        return
    kept = client.migrations(limit=None if every or states else limit)
    rows = [summary(m) for m in kept if not states or m.state.value in states][
        : None if every else limit
    ]

    def show_all() -> None:
        t = table("id", "container", "from", "to", "strategy", "state", "downtime", "total")
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

    emit(as_json, rows, show_all)


@click.command()
@click.argument("migration")
@json_opt
def watch(migration: str, as_json: bool) -> None:
    """Print a migration's events as they happen."""
    for ev in ferry_client().watch(migration):
        if as_json:
            click.echo(json.dumps(ev))
        else:
            out.print(event_line(ev), highlight=False)


@click.command()
@click.argument("migration")
@click.option("--wait", is_flag=True, help="Until it is final: then say how it ended.")
@click.option("--timeout", default=600.0, show_default=True, type=POSITIVE, help="s, with --wait.")
@json_opt
def cancel(migration: str, wait: bool, timeout: float, as_json: bool) -> None:
    """Roll a migration back (before its point of no return), or stop an evacuation (e-...)."""
    client = ferry_client()
    if migration.startswith("e-"):
        client.evacuation(migration).cancel()
    else:
        client.cancel(migration)
    if not wait or migration.startswith("e-"):
        emit(
            as_json,
            {"id": migration, "cancel": "requested"},
            lambda: out.print(f"{migration}: cancel requested"),
        )
        return
    deadline = time.monotonic() + timeout
    while not (m := client.status(migration)).state.final:
        if time.monotonic() > deadline:
            err.print(f"[yellow]{migration} still {m.state.value} after {timeout:.0f} s[/yellow]")
            sys.exit(EXIT_TIMEOUT)
        time.sleep(0.2)
    emit(as_json, summary(m), lambda: out.print(one_line(m), highlight=False))


@click.command()
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
    s = ferry_client().resolve(target, keep, force)
    emit(
        as_json,
        {"target": target, "keep": s.keep, "killed": list(s.kill), "note": s.note},
        lambda: out.print(f"{target}: {s.note}", highlight=False),
    )
