"""The runtime seam: one small interface, one driver per runtime.

``criu`` (workers.runtimes.criu) drives real CRIU on ferry's own containers;
``sim`` models them for scale runs. The coordinator only ever sees this
interface and the plain records below.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from workers.criu.log import PipedLog
from workers.records import (
    Capabilities,
    ContainerInfo,
    DumpStats,
    LazyReport,
    PagesTarget,
    RestoreStats,
)

Served = Callable[[int], None]  # wait_lazy's progress: bytes the page server has sent so far
# a post-copy restore's way to the source's page server: a connected socket, admitted
# (workers.dataplane.lazylink.open_lazy), that CRIU's lazy-pages daemon takes
LazySource = Callable[[], socket.socket]


class Runtime(Protocol):
    """What a node's runtime can do with the containers it manages."""

    name: str

    def capabilities(self) -> Capabilities:
        """What this node can do (probed once; the same record afterwards)."""
        ...

    def page_server(self, images: Path, sock: int) -> PipedLog:
        """Serve one dump's pages arriving on ``sock`` into ``images`` (where
        ``capabilities().page_server``; CapabilityError elsewhere)."""
        ...

    def containers(self) -> list[ContainerInfo]: ...

    def get(self, name: str) -> ContainerInfo: ...

    def start(
        self,
        name: str,
        argv: list[str],
        labels: dict[str, str] | None = None,
        sync: tuple[str, ...] = (),
        net: str = "",
    ) -> ContainerInfo: ...

    def checkpoint(
        self,
        name: str,
        images: Path,
        *,
        leave_running: bool = False,
        parent: Path | None = None,
        pages: PagesTarget | None = None,
    ) -> DumpStats: ...

    def predump(self, name: str, images: Path, parent: Path | None) -> DumpStats: ...

    def checkpoint_lazy(
        self, name: str, images: Path, address: str, port: int, parent: Path | None = None
    ) -> float: ...

    def wait_lazy(
        self, name: str, images: Path, timeout_s: float, served: Served | None = None
    ) -> DumpStats: ...

    def restore(
        self, name: str, images: Path, page_server: LazySource | None = None
    ) -> RestoreStats: ...

    def resume(self, name: str, images: Path | None = None) -> ContainerInfo: ...

    def lazy_report(self, images: Path) -> LazyReport:
        """What a post-copy restore from ``images`` pulled over the network, and the
        stalls its tree had waiting for it."""
        ...

    def kill(self, name: str) -> None: ...

    def admit(self, name: str) -> dict[str, Any]:
        """Refuse a container ``name`` that cannot arrive on this node (BadRequest, before
        anything freezes); facts of this node the source's ``carry`` reads."""
        ...

    def carry(self, name: str, into: Path, peer: dict[str, Any]) -> int:
        """Write into ``into`` (beside the checkpoint) what the destination, which
        ``admit``-ed with ``peer``, lacks to restore ``name``; the bytes written."""
        ...
