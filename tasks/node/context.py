"""What every phase of a node works with: the node's context, and the markers
that make a phase safe to run twice."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tasks.core.migration import Migration, Phase
from workers.dataplane.throttle import Uplink
from workers.errors import PermanentError
from workers.runtimes.base import Runtime

Progress = Callable[[dict[str, Any]], None]  # a phase's progress, as its task reports it
Handler = Callable[["NodeContext", Migration, Progress], dict[str, Any]]

FINAL = "final"


@dataclass(frozen=True)
class NodeContext:
    """One node, as its phase tasks see it."""

    node: str
    runtime: Runtime
    node_dir: Path  # this node's own state
    address: str  # host:port of this node's data-plane listener
    secret: bytes
    container_root: Path  # where containers' workdirs are (a sync dir may be below one)
    sync_roots: tuple[Path, ...] = ()  # below these, containers may declare sync dirs
    sync_ports: tuple[int, int] | None = None  # the rsync daemons' port range (None: any)
    uplink: Uplink | None = None  # the node's send budget (workers.dataplane.throttle)
    verify_grace_s: float = 0.2  # at most: verify waits until the restored tree ran
    pages_timeout_s: float = 600.0
    failpoints: Path | None = None  # fault suite only: workers.failpoints

    def images(self, mid: str, sub: str = FINAL) -> Path:
        """Where this node dumps a migration's images (source side)."""
        return self.node_dir / "images" / mid / sub

    def incoming(self, mid: str, sub: str = FINAL) -> Path:
        """Where the data plane lands a migration's images (destination side)."""
        return self.node_dir / "incoming" / mid / sub

    @property
    def page_size(self) -> int:
        """The node's page size (its probe's; 4 KiB if unknown): delta's block size."""
        return self.runtime.capabilities().page_size or 4096

    @property
    def host(self) -> str:
        return self.address.rpartition(":")[0]


def remembered(d: Path, phase: Phase) -> dict[str, Any] | None:
    try:
        result: dict[str, Any] = json.loads((d / f"ferry-{phase.value}.done").read_text())
        return result
    except (OSError, ValueError):
        return None


def remember(d: Path, phase: Phase, result: dict[str, Any]) -> dict[str, Any]:
    d.mkdir(parents=True, exist_ok=True)
    (d / f"ferry-{phase.value}.done").write_text(json.dumps(result))
    return result


def last_pass(m: Migration) -> str | None:
    return f"pass-{len(m.passes)}" if m.passes else None


def check_asked_for(ctx: NodeContext, m: Migration) -> None:
    """Before the first freeze: the container is still the one the migration was asked
    for (a request that waited for a coordinator must not move a restarted one)."""
    asked = m.options.container_started
    info = ctx.runtime.get(m.container)
    if asked is not None and info.started != asked:
        raise PermanentError(
            f"{m.container!r} on {ctx.node} was restarted since this migration was asked "
            f"(it started {info.started - asked:+.0f} s later, pid {info.pid}): "
            "nothing was frozen; migrate it again"
        )
