"""The runtime seam: one small interface, one driver per runtime.

``criu`` (workers.runtimes.criu) drives real CRIU on ferry's own containers;
``sim`` models them for scale runs. The coordinator only ever sees this
interface and the plain records below.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from workers.errors import BadRequest

if TYPE_CHECKING:  # workers.dataplane.pagestream reads CRIU's logs through workers.criu.adapter, which needs this
    from workers.dataplane.pagestream import PagesTarget, StreamStats

CONTAINER_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}\Z")  # \Z: "$" would let a trailing newline in


def check_container_name(name: object) -> str:
    """Return ``name`` if it is a valid container name, else raise BadRequest."""
    if not isinstance(name, str) or not CONTAINER_NAME.match(name):
        raise BadRequest(
            f"bad container name {name!r}: use 1-63 lowercase letters, digits, '.', '_' "
            "or '-', starting with a letter or digit"
        )
    return name


@dataclass(frozen=True)
class ContainerInfo:
    """What a node knows about one of its containers."""

    name: str
    pid: int
    argv: tuple[str, ...]
    state: str  # running | frozen | exited
    memory_bytes: int
    started: float
    log: str
    runtime: str
    labels: dict[str, str] = field(default_factory=dict)
    sync: tuple[str, ...] = ()  # node-local directories synced when it migrates (workers.dirsync.dirs)


@dataclass(frozen=True)
class DumpStats:
    """What one checkpoint cost, from CRIU's stats-dump image and the wall clock."""

    freezing_ms: float  # time to freeze the tree
    frozen_ms: float  # time the tree stayed frozen during the dump
    memdump_ms: float
    memwrite_ms: float
    pages_scanned: int
    pages_skipped_parent: int
    pages_written: int
    pages_lazy: int
    wall_ms: float  # the whole criu call, as the worker saw it
    image_bytes: int  # bytes in the images dir after the dump
    pages: StreamStats | None = None  # the pages went to the destination's page server


@dataclass(frozen=True)
class RestoreStats:
    """What one restore cost, from CRIU's stats-restore image and the wall clock."""

    pid: int
    restore_ms: float  # CRIU's own restore time
    forking_ms: float
    pages_restored: int
    wall_ms: float


class Runtime(Protocol):
    """What a node's runtime can do with the containers it manages."""

    name: str

    def containers(self) -> list[ContainerInfo]: ...

    def get(self, name: str) -> ContainerInfo: ...

    def start(self, name: str, argv: list[str], labels: dict[str, str] | None = None,
              sync: tuple[str, ...] = ()) -> ContainerInfo: ...

    def checkpoint(self, name: str, images: Path, *, leave_running: bool = False,
                   parent: Path | None = None, pages: PagesTarget | None = None) -> DumpStats: ...

    def predump(self, name: str, images: Path, parent: Path | None) -> DumpStats: ...

    def checkpoint_lazy(self, name: str, images: Path, address: str, port: int,
                        parent: Path | None = None) -> float: ...

    def wait_lazy(self, name: str, images: Path, timeout_s: float) -> DumpStats: ...

    def restore(self, name: str, images: Path,
                page_server: tuple[str, int] | None = None) -> RestoreStats: ...

    def resume(self, name: str, images: Path | None = None) -> ContainerInfo: ...

    def kill(self, name: str) -> None: ...
