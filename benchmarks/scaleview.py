"""benchmarks/scale.py's outputs: its table (printed and markdown), its JSON and its plots."""

from __future__ import annotations

import datetime
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks import costs
from benchmarks.machine import machine
from benchmarks.svgplot import Series, line_chart

KINDS = (
    ("migration records", "ferry:mig:", ""),
    ("event streams", "ferry:mig:", ":events"),
    ("task results", "celery-task-meta-", ""),
    ("evacuations", "ferry:evac:", ""),
    ("node records", "ferry:node", ""),
)


def headline(run: dict[str, Any]) -> str:
    return (
        f"SIMULATED: {run['nodes']} sim nodes, {run['containers']} containers of {run['mib']} MiB, "
        f"{run['link']} links, strategy {run['strategy']}; nodes up in {run['nodes_up_s']} s, "
        f"{run['containers_started_per_s']} containers started per s; idle, the cluster used "
        + ", ".join(f"{k} {v}" for k, v in run["idle_cpu_per_s"].items())
        + " CPU s per s; load "
        f"{run['load1_before_after'][0]} before, {run['load1_before_after'][1]} after "
        f"({run['run_s']} s in all)"
    )


def lines() -> list[tuple[str, Callable[[dict[str, Any]], str]]]:
    """The table's rows: a label and how a round's row shows in it."""
    return [
        (
            "drained at once",
            lambda r: f"{len(r['drained'])} ({r['drained'][0]}..{r['drained'][-1]})",
        ),
        (
            "per node / per evacuation, order",
            lambda r: (
                f"{r['per_node']} / {r['max_parallel']}, {r.get('order', 'small-first')}, "
                f"{r.get('link_model', 'capped')}"
            ),
        ),
        ("moved", lambda r: f"{r['moved']} {r['outcomes']}"),
        (
            "MB of memory moved / sent (all passes)",
            lambda r: f"{r['memory_moved'] / 1e6:.0f} / {r['bytes_moved'] / 1e6:.0f}",
        ),
        ("strategies", lambda r: f"{r['strategies']}"),
        ("planned per s (evacuate calls)", lambda r: f"{r['planned_per_s']}"),
        ("driven per s (done / makespan)", lambda r: f"{r['driven_per_s']}"),
        ("coordinator capacity per s (1/CPU)", lambda r: f"{r['coordinator_capacity_per_s']}"),
        (
            "makespan / lower bound",
            lambda r: f"{r['makespan_s']} / {r['lower_bound_s']} s = {r['ratio']}",
        ),
        ("rounds per drained node (moves / per node)", lambda r: f"{r['rounds_per_drained_node']}"),
        *[
            (f"  {k} ms, median", lambda r, k=k: f"{r['costs_ms_median'][k]}")
            for k in (*costs.PARTS, "record writes")
        ],
        (
            "downtime / migration, medians",
            lambda r: f"{r['downtime_ms_median']} ms / {r['migration_s_median']} s",
        ),
        (
            "CPU s per migration (net of idle)",
            lambda r: " ".join(f"{k[:5]} {v}" for k, v in r["cpu_s_per_migration"].items()),
        ),
        ("Redis bytes per migration (keys)", lambda r: f"{r['redis_bytes_per_migration']}"),
        ("  used_memory delta per migration", lambda r: f"{r['redis_used_delta_per_migration']}"),
        *[
            (f"  of which {k}", lambda r, k=k: f"{r['redis_key_bytes_per_migration'][k]}")
            for k, _, _ in KINDS
        ],
        (
            "events per migration mean (min-max)",
            lambda r: "{mean} ({min}-{max})".format(**r["events_per_migration"]),
        ),
        *[
            (
                f"RSS MiB per {k} mean (max)",
                lambda r, k=k: "{mean} ({max}) x{count}".format(**r["rss_mib_per_process"][k]),
            )
            for k in ("coordinator", "supervisor", "celery worker")
        ],
        ("RSS MiB, every process, peak", lambda r: f"{r['rss_mib_total_peak']}"),
        ("every container once, off the drained", lambda r: f"{r['exactly_once']}"),
        ("load1 before, after", lambda r: f"{r['load1_before_after']}"),
    ]


def print_table(run: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    print(headline(run))
    for label, cell in lines():
        print(f"{label:<40} " + " | ".join(f"{cell(r):<36}" for r in rows))


def markdown(doc: dict[str, Any]) -> str:
    """The saved run as a markdown table, one column per round."""
    rows = doc["rows"]
    out = [
        f"{headline(doc['run'])}; measured {doc['generated']}.",
        "",
        "| | " + " | ".join(f"round {i + 1}" for i in range(len(rows))) + " |",
        "|---|" + "---|" * len(rows),
    ]
    out += [
        f"| {label.strip()} | " + " | ".join(cell(r).replace("|", "/") for r in rows) + " |"
        for label, cell in lines()
    ]
    return "\n".join(out)


def write(
    path: Path, png: Path, run: dict[str, Any], rows: list[dict[str, Any]], command: str
) -> None:
    out = {
        "benchmark": "scale",
        "simulated": "true: the sim runtime (docs/sim.md), never real CRIU",
        "generated": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {**machine(), "load1": os.getloadavg()[0]},
        "command": command,
        "units": {"*_s": "s", "*_bps": "bytes/s", "redis_*": "bytes", "rss_*": "MiB"},
        "run": run,
        "rows": rows,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {path}", file=sys.stderr)
    plot(png, run, rows)


def concurrency_svg(path: Path, run: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    """Makespan against moves at once per node, per code run, beside each round's bound."""

    def key(r: dict[str, Any]) -> tuple[str, str, str]:
        return r.get("code", "this tree"), r.get("order", "small-first"), r.get("link_model", "")

    series = []
    for i, (code, order, model) in enumerate(dict.fromkeys(key(r) for r in rows)):
        mine = [r for r in rows if key(r) == (code, order, model)]
        label = f"{code.split('/')[-1]}, {order}, {model}"
        series.append(Series(label, [(r["per_node"], r["makespan_s"]) for r in mine], False, i))
        series.append(
            Series(
                "  its lower bound", [(r["per_node"], r["lower_bound_s"]) for r in mine], True, i
            )
        )
    drained = len(rows[0]["drained"])
    title = (
        f"SIMULATED: {drained} of {run['nodes']} nodes drained at once, "
        f"{run['containers']} containers, {run['link']} links"
    )
    svg = line_chart(title, "moves at once per node (per evacuation: twice that)", "s", series)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(svg)
    print(f"wrote {path}", file=sys.stderr)


def plot(png: Path, run: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing (the bench extra): no plot", file=sys.stderr)
        return
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for r in rows:
        done = r["timeline"]["done_s"]
        line = a.step(
            done,
            range(1, len(done) + 1),
            where="post",
            label=f"per node {r['per_node']}: {r['makespan_s']:.1f} s",
        )[0]
        a.axvline(
            r["lower_bound_s"],
            color=line.get_color(),
            linestyle="--",
            label=f"lower bound {r['lower_bound_s']:.1f} s",
        )
    a.set(
        xlabel="s since the evacuations started",
        ylabel="migrations done",
        title=f"SIMULATED: {len(rows[0]['drained'])} of {run['nodes']} nodes drained at once, "
        f"{run['link']} links",
    )
    a.legend(fontsize="small")
    s = rows[0]["timeline"]["samples"]
    t = [x["t"] for x in s]
    b.plot(t, [x["redis_used"] / 2**20 for x in s], label="Redis used_memory")
    for k in ("celery worker", "supervisor", "coordinator"):
        b.plot(t, [x["rss"][k] / 2**20 for x in s], label=f"RSS, all {k} processes")
    b.set(
        xlabel=f"s (per node {rows[0]['per_node']})",
        ylabel="MiB",
        yscale="log",
        title="memory during the first round",
    )
    b.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(png, dpi=90)
    print(f"wrote {png}", file=sys.stderr)
