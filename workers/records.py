"""The records the node side's layers hand each other: what a dump and a restore
cost, and where and how a dump's pages travel.

They sit below the CRIU adapter, the data plane and the runtimes, which all
speak them; none of them does anything.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
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
