"""``ferry`` commands about nodes and containers: nodes, ps, run, cordon, uncordon, evacuate."""

from __future__ import annotations

import sys
import time

import click

from tasks.api import evacview
from tasks.api.console import LABEL, POSITIVE, emit, err, ferry_client, gib, json_opt, out, table
from tasks.core.chooser import runs
from tasks.core.codec import encode
from tasks.core.nodes import NodeRecord

SHORT = {"cold": "cold", "precopy": "pre", "delta": "delta", "postcopy": "post", "hybrid": "hyb"}


def strategies(rec: NodeRecord) -> str:
    """The strategies a node can run, compactly (``cold,delta,post``)."""
    return ",".join(SHORT[s.value] for s in runs(rec.caps)) or "none"


@click.command()
@click.option("--wide", is_flag=True, help="Also arch, CRIU and address (wider than 80 columns).")
@json_opt
def nodes(wide: bool, as_json: bool) -> None:
    """List the nodes: the strategies each can run, load, last seen (`ferry doctor`: why)."""
    records = ferry_client().nodes()
    rows = [{**encode(n), "strategies": [s.value for s in runs(n.caps)]} for n in records]

    def show() -> None:
        extra = ("arch", "criu", "address") if wide else ()
        t = table("node", "state", "strategies", "mem free", "load", "ctrs", "seen", *extra)
        now = time.time()
        for n in records:
            p = n.probe
            state = ("up" if n.alive else "down") + (" (cordoned)" if n.cordoned else "")
            free = gib(p["mem_free_bytes"]) if "mem_free_bytes" in p else "-"  # -: not limited
            cells = [
                n.name,
                state,
                strategies(n),
                free,
                f"{n.load:.2f}",
                str(len(n.containers)),
                f"{now - n.last_seen:.0f}s ago",
            ]
            if wide:
                criu = p.get("criu_version") or ("sim" if p.get("simulated") else "no")
                if p.get("criu_reason"):
                    criu += f" ({p['criu_reason']})"
                cells += [p.get("arch", "?"), criu, n.address]
            t.add_row(*cells)
        out.print(t)

    emit(as_json, rows, show)


@click.command()
@json_opt
def ps(as_json: bool) -> None:
    """List the containers on every node."""
    rows = ferry_client().containers()

    def show() -> None:
        t = table(
            "container",
            "node",
            "runtime",
            "state",
            "pid",
            "memory",
            "address",
            "synced dirs",
            "command",
        )
        for c in rows:
            t.add_row(
                c["name"],
                c["node"],
                c.get("runtime", "-"),
                c["state"],
                str(c["pid"]),
                gib(c["memory_bytes"]),
                c.get("net") or "-",
                " ".join(c.get("sync", [])) or "-",
                " ".join(c["argv"])[:60],
            )
        out.print(t)

    emit(as_json, rows, show)


# Only ferry's own options come before the command: the first word that is not
# one starts it (``--`` marks it plainly), and an unknown option before it is an
# error ("No such option: --rootfs. Did you mean ...?"), never the program to run.
@click.command(context_settings={"allow_interspersed_args": False})
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
@click.option(
    "--label",
    "labels",
    multiple=True,
    type=LABEL,
    metavar="KEY=VALUE",
    help="A label it carries; repeatable (a sim node reads sim.memory=BYTES and the like).",
)
@click.option(
    "--rootfs",
    default=None,
    metavar="DIR",
    help="Run CMD in an OCI container with this rootfs (a node with FERRY_RUNTIME=oci).",
)
@click.option("--memory", default=None, help="The OCI container's memory limit: 512M, 1G.")
@click.option(
    "--net",
    default="",
    metavar="ADDR/PREFIX",
    help="Its own address on the nodes' bridge network, kept across moves with its TCP "
    "connections (nodes with FERRY_BRIDGE).",
)
@click.argument("cmd", nargs=-1, required=True, type=click.UNPROCESSED)
@json_opt
def run(
    node: str,
    name: str | None,
    sync: tuple[str, ...],
    labels: tuple[tuple[str, str], ...],
    rootfs: str | None,
    memory: str | None,
    net: str,
    cmd: tuple[str, ...],
    as_json: bool,
) -> None:
    """Start CMD on NODE as a container: ferry run --node N [--sync DIR] [--label K=V]
    [--net ADDR/PREFIX] -- CMD ..."""
    pairs = dict(labels)
    if rootfs:
        pairs["oci.rootfs"] = rootfs
    if memory:
        pairs["oci.memory"] = memory
    res = ferry_client().run(node, list(cmd), name, labels=pairs, sync=sync, net=net)
    emit(
        as_json,
        res,
        lambda: out.print(
            f"{res['name']} runs on {res['node']}{f' at {net}' if net else ''} "
            f"(pid {res['pid']}, log {res['log']})"
        ),
    )


@click.command()
@click.argument("node")
@json_opt
def cordon(node: str, as_json: bool) -> None:
    """Mark NODE so that nothing new lands on it."""
    ferry_client().cordon(node)
    emit(as_json, {"node": node, "cordoned": True}, lambda: out.print(f"{node} cordoned"))


@click.command()
@click.argument("node")
@json_opt
def uncordon(node: str, as_json: bool) -> None:
    """Let containers land on NODE again."""
    ferry_client().uncordon(node)
    emit(as_json, {"node": node, "cordoned": False}, lambda: out.print(f"{node} uncordoned"))


@click.command()
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
            ferry_client(),
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
