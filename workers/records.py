"""The records the node side's layers hand each other: what a node's runtime can
do, what a dump and a restore cost, and where and how a dump's pages travel.

They sit below the CRIU adapter, the data plane and the runtimes, which all
speak them; none of them does anything.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class PagesTarget:
    """Where a dump's pages go: the destination's transfer service, for one migration."""

    address: tuple[str, int]
    token: Callable[[], str]  # a fresh data-plane token per connection
    migration: str
    subdir: str
    bandwidth_bps: float | None = None  # this migration's cap, if any
    progress: Callable[[int, float], None] | None = None  # (bytes sent, seconds so far)
    stall_s: float = 10.0  # silence that ends the stream (the tree is frozen)
    corrupt: bool = False  # fault suite only: flip one byte on the wire, after hashing


@dataclass(frozen=True)
class StreamStats:
    """What the source sent through one pages session."""

    bytes: int
    blake3: str
    seconds: float  # from the first byte to the last

    def to_dict(self) -> dict[str, Any]:
        return {
            "bytes": self.bytes,
            "blake3": self.blake3,
            "wall_ms": round(self.seconds * 1000, 3),
        }


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


@dataclass(frozen=True)
class LazyReport:
    """What a post-copy restore pulled over the network, and what waiting for it cost."""

    bytes: int | None  # None: unknown
    faults: int = 0  # pages the tree faulted on and waited for
    stalls: tuple[tuple[float, float], ...] = ()  # (start epoch, ms): workers.criu.log


@dataclass(frozen=True)
class Capabilities:
    """What a node's runtime can do: published in the node's record for the chooser.

    ``facts`` are the probe's other findings (kernel, CRIU version, memory,
    disk, ...), shown by ``ferry nodes``; the flags are what decisions read,
    so nothing above the runtime needs to know which runtime it is.
    """

    arch: str
    criu_ok: bool  # checkpoint and restore work here (the sim's model always does)
    criu_reason: str = ""  # why not
    soft_dirty: bool = False  # the kernel tracks dirty pages for pre-copy
    lazy_pages: bool = False  # post-copy works here (a real lazy round trip passed)
    lazy_pages_reason: str = ""  # why not
    page_server: bool = False  # a dump's pages can stream into this node's CRIU page server
    simulated: bool = False
    facts: dict[str, Any] = field(default_factory=dict)

    def record(self) -> dict[str, Any]:
        """The ``probe`` entry of the node's record: the facts, then the flags."""
        flags = {k: v for k, v in self.__dict__.items() if k != "facts"}
        return {**self.facts, **flags}
