"""``ferry doctor [NODE]``: what each node's kernel has, what it lacks, and what to do.

It reads the probes the workers published (or, with ``--local``, probes
this machine itself, no cluster needed) and says per node which strategies
it can run, and per missing piece which strategies and containers it costs
and which kernel option, package or kernel (Ubuntu's linux-raspi) brings it.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import click
from rich.markup import escape

from tasks.api.console import emit, ferry_client, json_opt, out
from tasks.core.nodes import NodeRecord
from tasks.core.requirements import Diagnosis, diagnose, peers
from workers.errors import BadRequest
from workers.ids import check_node_name
from workers.records import Need
from workers.runtimes.criu import CriuRuntime


def local_record() -> NodeRecord:
    """This machine's probe, as a worker would publish it (its lazy round trip included)."""
    with tempfile.TemporaryDirectory(prefix="ferry-doctor-") as tmp:
        rt = CriuRuntime(Path(tmp) / "state", Path(tmp) / "containers")
        caps = rt.capabilities()
    return NodeRecord("local", runtime="criu", probe=caps.record())


def to_json(rec: NodeRecord, d: Diagnosis) -> dict[str, Any]:
    p = rec.probe
    lacking = {r.need for r in d.missing}
    return {
        "node": d.node,
        "arch": p.get("arch"),
        "bits": p.get("bits"),
        "page_size": p.get("page_size"),
        "kernel": p.get("kernel"),
        "criu": p.get("criu_version"),
        "cgroup": p.get("cgroup"),
        "strategies": [s.value for s in d.strategies],
        "dirty_tracker": d.tracker,
        "has": [str(n) for n in Need if n not in lacking and str(n) in p.get("checks", {})],
        "missing": [
            {
                "need": str(r.need),
                "what": r.what,
                "lost": list(r.lost),
                "costs": r.costs,
                "fix": r.fix,
            }
            for r in d.missing
        ],
        "notes": list(d.notes),
        "checks": p.get("checks", {}),
    }


def show(report: dict[str, Any]) -> None:
    pages = f"{report['page_size'] // 1024} KiB pages" if report["page_size"] else "? pages"
    head = (
        f"{report['arch']}, {report['bits'] or '?'}-bit, {pages}, "
        f"Linux {report['kernel'] or '?'}, CRIU {report['criu'] or 'none'}, "
        f"cgroup {report['cgroup'] or '?'}"
    )
    out.print(f"[bold]{escape(report['node'])}[/bold] ({escape(head)})", highlight=False)
    out.print(f"  runs: {', '.join(report['strategies']) or 'nothing'}", highlight=False)
    out.print(f"  dirty tracker: {report['dirty_tracker']}", highlight=False)
    if report["has"]:
        out.print(
            f"  has: {', '.join(report['has'])}",
            highlight=False,
            soft_wrap=not out.is_terminal,
        )
    for m in report["missing"]:
        lost = f"loses {', '.join(m['lost'])}; " if m["lost"] else ""
        out.print(
            f"  [red]missing[/red] {escape(m['what'])}: {escape(lost + m['costs'])}",
            highlight=False,
            soft_wrap=not out.is_terminal,
        )
        out.print(f"    do: {escape(m['fix'])}", highlight=False, soft_wrap=not out.is_terminal)
    for note in report["notes"]:
        out.print(f"  note: {escape(note)}", highlight=False, soft_wrap=not out.is_terminal)


@click.command()
@click.argument("node", required=False)
@click.option("--local", is_flag=True, help="Probe this machine instead of the cluster's nodes.")
@json_opt
def doctor(node: str | None, local: bool, as_json: bool) -> None:
    """Per node: the strategies it can run, what its kernel lacks, what each lack costs."""
    records = {"local": local_record()} if local else {r.name: r for r in ferry_client().nodes()}
    if node is not None and not local:
        if check_node_name(node) not in records:
            raise BadRequest(f"unknown node {node!r}: `ferry nodes` lists them")
        chosen = [node]
    else:
        chosen = sorted(records)
    reports = [to_json(records[n], diagnose(records[n])) for n in chosen]
    groups = peers(records)

    def human() -> None:
        if not reports:
            out.print("no nodes registered: start workers, or `ferry doctor --local`")
        for r in reports:
            show(r)
        if len(reports) == 1 and len(records) > 1:
            mates = next(g for g in groups.values() if reports[0]["node"] in g)
            others = [n for n in mates if n != reports[0]["node"]]
            out.print(f"  pairs with: {', '.join(others) or 'no other node'}", highlight=False)
        elif len(records) > 1:
            out.print("nodes that can exchange images:")
            for key, names in groups.items():
                out.print(f"  {escape(key)}: {', '.join(names)}", highlight=False)

    emit(as_json, {"nodes": reports, "pairs": groups}, human)
