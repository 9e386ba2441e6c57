"""``ferry`` commands about one container: stop, rm, logs, adopt, release."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import click

from tasks.api.console import emit, ferry_client, json_opt, out
from workers.errors import BadRequest, UnknownContainer
from workers.ids import check_container_name

node_opt = click.option("--node", default=None, help="The copy on NODE, where two nodes hold one.")


def _find(name: str, node: str | None) -> dict[str, Any]:
    check_container_name(name)
    found = [
        c for c in ferry_client().containers() if c["name"] == name and node in (None, c["node"])
    ]
    if not found:
        raise UnknownContainer(name)
    running = [c for c in found if c["state"] != "exited"]
    return (running or found)[0]


@click.command()
@click.argument("name")
@node_opt
@json_opt
def stop(name: str, node: str | None, as_json: bool) -> None:
    """Stop container NAME (its whole tree) and forget it."""
    where = _find(name, node)["node"]
    ferry_client().kill(name, node=where)
    emit(
        as_json,
        {"name": name, "node": where, "stopped": True},
        lambda: out.print(f"{name} stopped on {where}"),
    )


@click.command()
@click.argument("name")
@node_opt
@click.option("--force", is_flag=True, help="Stop it first if it still runs.")
@json_opt
def rm(name: str, node: str | None, force: bool, as_json: bool) -> None:
    """Forget container NAME once it has exited (--force: stop it first)."""
    c = _find(name, node)
    if c["state"] != "exited" and not force:
        raise BadRequest(
            f"{name} is {c['state']} on {c['node']}: `ferry stop {name}` or `ferry rm --force {name}`"
        )
    ferry_client().kill(name, node=c["node"])
    emit(
        as_json,
        {"name": name, "node": c["node"], "removed": True},
        lambda: out.print(f"{name} removed from {c['node']}"),
    )


@click.command()
@click.argument("name")
@node_opt
@click.option("-f", "--follow", is_flag=True, help="Keep printing what it writes (Ctrl-C to stop).")
@click.option(
    "-n", "--lines", default=None, type=click.IntRange(min=0), help="Only the last N lines."
)
def logs(name: str, node: str | None, follow: bool, lines: int | None) -> None:
    """Print what container NAME wrote to its stdout and stderr (on shared storage, wherever it moved)."""
    c = _find(name, node)
    log = Path(c["log"])
    if not log.exists():
        raise BadRequest(
            f"{name}'s log is on {c['node']} at {log}, not reachable from here "
            "(run this on the node, or put FERRY_SHARED_DIR on storage every node sees)"
        )
    with log.open("rb") as f:
        text = f.read()
        if lines is not None:
            text = b"".join(text.splitlines(keepends=True)[-lines:]) if lines else b""
        sys.stdout.buffer.write(text)
        sys.stdout.flush()
        while follow:
            chunk = f.read()
            if chunk:
                sys.stdout.buffer.write(chunk)
                sys.stdout.flush()
            else:
                time.sleep(0.2)


@click.command()
@click.argument("ref", metavar="podman:NAME|runc:ID")
@click.option("--node", required=True, help="The node whose Podman or runc runs it.")
@json_opt
def adopt(ref: str, node: str, as_json: bool) -> None:
    """Put Podman container NAME, or runc container ID (under the node's FERRY_RUNC_ROOT),
    on NODE into ferry's inventory, so that it can be moved (refused, saying why, if it
    cannot be checkpointed: a tty, a bind-mounted host dir, a device, stdio on a host
    file)."""
    got = ferry_client().adopt(node, ref)
    emit(as_json, got, lambda: out.print(f"{got['name']} adopted on {node} (pid {got['pid']})"))


@click.command()
@click.argument("name")
@json_opt
def release(name: str, as_json: bool) -> None:
    """Hand adopted container NAME back to Podman or runc: ferry forgets it, it runs on."""
    got = ferry_client().release(name)
    emit(as_json, got, lambda: out.print(f"{name} released on {got['node']}"))
