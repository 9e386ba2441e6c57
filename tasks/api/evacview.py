"""``ferry evacuate``: the plan, live progress, the report and the exit code."""

from __future__ import annotations

import json
import time
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn
from rich.table import Table

from tasks.api.client import Ferry
from tasks.api.handles import EvacuationHandle
from tasks.core.evacplan import Unplaceable
from tasks.core.summary import size
from workers.errors import EXIT_FAILED, EXIT_OK, EXIT_TIMEOUT, EXIT_USAGE

COLOURS = {
    "moved": "green",
    "rolled_back": "yellow",
    "failed": "red",
    "not_placed": "red",
    "not_started": "yellow",
    "gone": "yellow",
}


def mib(n: float | None) -> str:
    return "-" if n is None else size(n)


def plan_table(preview: dict[str, Any]) -> Table:
    """The moves in run order, then the containers that have no destination and why."""
    t = Table(
        "order",
        "container",
        "to",
        "memory",
        "note",
        title=f"evacuation plan for {preview['node']}"
        f"{' (dry run: nothing changed)' if preview['dry_run'] else ''}",
    )
    for m in sorted(preview["moves"], key=lambda m: m["order"]):
        t.add_row(str(m["order"]), m["container"], m["dst"], mib(m["memory_bytes"]), "")
    for u in preview["unplaceable"]:
        t.add_row("-", u["container"], "[red]nowhere[/red]", "", u["reason"])
    limits = preview["limits"]
    t.caption = (
        f"{len(preview['moves'])} to move, {len(preview['unplaceable'])} without a place; "
        f"at most {limits['max_parallel']} at once, {limits['per_node']} per node; "
        f"lower bound {preview['lower_bound_s']:.1f} s at "
        f"{size(preview['link_bps'])}/s per node link"
    )
    return t


def follow(handle: EvacuationHandle, console: Console, poll_s: float = 0.25) -> dict[str, Any]:
    """Draw an overall bar and a line per running migration until the report is in; return it."""
    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[info]}"))
    with Progress(*columns, console=console, transient=True) as bar:
        first = handle.progress()
        overall = bar.add_task(f"evacuating {first['node']}", total=first["total"] or 1, info="")
        lines: dict[str, TaskID] = {}
        while True:
            p = handle.progress()
            bar.update(
                overall,
                completed=p["finished"],
                info=f"{p['finished']}/{p['total']} done, {len(p['running'])} running, "
                f"{p['elapsed_s']:.0f} s",
            )
            for r in p["running"]:
                info = (
                    f"{r['strategy']}: {r['phase']}  {mib(r['bytes_sent'])} of "
                    f"{mib(r['bytes_total'] or r['memory_bytes'])}"
                )
                total = r["bytes_total"] or None
                if r["migration"] not in lines:
                    lines[r["migration"]] = bar.add_task(
                        f"  {r['container']} -> {r['dst']}", total=total, info=info
                    )
                bar.update(lines[r["migration"]], completed=r["bytes_sent"], total=total, info=info)
            for mid in set(lines) - {r["migration"] for r in p["running"]}:
                bar.remove_task(lines.pop(mid))
            if p["state"] != "running":
                return handle.wait()
            time.sleep(poll_s)


def report_table(rep: dict[str, Any]) -> Table:
    """One row per container: outcome, downtime, total time; makespan against its bound."""
    t = Table(
        "container",
        "to",
        "outcome",
        "strategy",
        "downtime",
        "total",
        "sent",
        "why",
        title=f"evacuation {rep['id']} of {rep['node']}: {rep['state'].replace('_', ' ')}",
    )
    for r in rep["containers"]:
        colour = COLOURS.get(r["outcome"], "white")
        t.add_row(
            r["container"],
            r["dst"] or "-",
            f"[{colour}]{r['outcome'].replace('_', ' ')}[/{colour}]",
            r["strategy"] or "-",
            "-" if r["downtime_ms"] is None else f"{r['downtime_ms']:.0f} ms",
            "-" if r["total_s"] is None else f"{r['total_s']:.2f} s",
            mib(r["bytes"]) if r["bytes"] else "-",
            (r["error"] or "")[:70],
        )
    ratio = f" ({rep['ratio']:.2f}x)" if rep["ratio"] else ""
    by = f", set by {rep['bound_by']}" if rep.get("bound_by") else ""
    t.caption = (
        f"makespan {rep['makespan_s']:.1f} s; lower bound {rep['lower_bound_s']:.1f} s"
        f"{ratio}{by}; {rep['node']}'s uplink {size(rep['link_bps'])}/s (measured where faster)"
    )
    return t


def exit_code(rep: dict[str, Any]) -> int:
    """0 every container moved; 4 the timeout ended it; 1 anything else left some behind."""
    if rep["state"] == "timed_out":
        return EXIT_TIMEOUT
    return EXIT_OK if rep["counts"]["moved"] == len(rep["containers"]) else EXIT_FAILED


def run(
    client: Ferry,
    node: str | None,
    cancel_id: str | None,
    as_json: bool,
    no_wait: bool,
    out: Console,
    err: Console,
    **options: Any,
) -> int:
    """Cancel evacuation ``cancel_id``, or evacuate ``node`` and follow it; the exit code."""

    def emit(data: Any, human: Any) -> None:
        if as_json:
            click.echo(json.dumps(data, default=str, indent=1))
        else:
            out.print(human, highlight=False)

    if cancel_id:
        client.evacuation(cancel_id).cancel()
        emit(
            {"id": cancel_id, "cancel": "requested"},
            f"{cancel_id}: cancel requested; the migrations under way finish",
        )
        return EXIT_OK
    assert node is not None
    try:
        handle = client.evacuate(node, **options)
    except Unplaceable as exc:
        preview = exc.preview
        emit({**preview, "error": str(exc)}, plan_table(preview))
        raise
    if handle.dry_run:
        emit(handle.plan, plan_table(handle.plan))
        refused = handle.plan["unplaceable"] and not options["allow_partial"]
        return EXIT_USAGE if refused else EXIT_OK
    if no_wait:
        emit({"id": handle.id}, handle.id)
        return EXIT_OK
    if not as_json:
        err.print(plan_table(handle.plan))
        err.print(
            f"{handle.id}: evacuating {node}; Ctrl-C stops watching, not the evacuation",
            highlight=False,
        )
    try:
        rep = handle.wait() if as_json else follow(handle, err)
    except KeyboardInterrupt:
        err.print(f"{handle.id} goes on: `ferry evacuate --cancel {handle.id}` stops it")
        return 130
    emit(rep, report_table(rep))
    if not as_json:
        out.print(rep["message"], highlight=False)
    return exit_code(rep)
