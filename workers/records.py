"""The records the node side's layers hand each other: what a node's runtime can
do, what a dump and a restore cost, and where and how a dump's pages travel.

They sit below the CRIU adapter, the data plane and the runtimes, which all
speak them; none of them does anything.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


@dataclass(frozen=True)
class ContainerInfo:
    """What a node knows about one of its containers."""

    name: str
    pid: int = 0
    argv: tuple[str, ...] = ()
    state: str = "running"  # running | frozen | exited
    memory_bytes: int = 0
    started: float = 0.0
    log: str = ""
    runtime: str = "criu"
    labels: dict[str, str] = field(default_factory=dict)
    # node-local directories synced when it migrates (workers.dirsync.dirs)
    sync: tuple[str, ...] = ()
    net: str = ""  # its own address, ADDR/PREFIX (workers.runtimes.netns); "": the node's


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


class Need(StrEnum):
    """A piece of the kernel (or its settings) that ferry's strategies need.

    The probe (workers.criu.kernel) lists the ones it found missing in
    ``Capabilities.lacks``; tasks.core.requirements says what each costs and
    what to do about it.
    """

    CHECKPOINT_RESTORE = "checkpoint_restore"  # CONFIG_CHECKPOINT_RESTORE: CRIU at all
    NAMESPACES = "namespaces"  # pid, uts, ipc, mnt, net: ferry's containers
    USERFAULTFD = "userfaultfd"  # CONFIG_USERFAULTFD: lazy pages (post-copy, hybrid)
    UFFD_WP = "uffd_wp"  # userfaultfd write-protect + PAGEMAP_SCAN: a tracker without soft-dirty
    SOFT_DIRTY = "soft_dirty"  # CONFIG_MEM_SOFT_DIRTY: pre-copy's tracker (x86 only)
    UNIX_DIAG = "unix_diag"  # sock diag per family: CRIU dumps of that family's sockets
    INET_DIAG = "inet_diag"
    PACKET_DIAG = "packet_diag"
    NETLINK_DIAG = "netlink_diag"
    PIPE_MAX_SIZE = "pipe_max_size"  # fs.pipe-max-size >= 4 MiB: CRIU's page server


class Tracker(StrEnum):
    """How a node's kernel tells pre-copy which pages were written since the last pass."""

    SOFT_DIRTY = "soft-dirty"  # CRIU pre-dumps with --track-mem (x86 kernels with the bit)
    UFFD_WP = "uffd-wp"  # userfaultfd async write-protect + PAGEMAP_SCAN (workers.tracker)
    NONE = "none"


def tracker_of(soft_dirty: bool, lacks: tuple[Need, ...]) -> Tracker:
    """The tracker a node's pre-copy uses: soft-dirty where the kernel has it, else uffd-wp
    where the probe's round trip passed, else none."""
    if soft_dirty:
        return Tracker.SOFT_DIRTY
    return Tracker.NONE if Need.UFFD_WP in lacks else Tracker.UFFD_WP


@dataclass(frozen=True)
class Capabilities:
    """What a node's runtime can do: published in the node's record for the chooser.

    ``facts`` are the probe's other findings (kernel config, CRIU version,
    memory, disk, ...), shown by ``ferry nodes`` and ``ferry doctor``; the
    flags are what decisions read, so nothing above the runtime needs to know
    which runtime it is. A record published before a field existed lacks it:
    readers take 0, "" and () as "not probed".
    """

    arch: str
    criu_ok: bool  # checkpoint and restore work here (the sim's model always does)
    criu_reason: str = ""  # why not
    soft_dirty: bool = False  # the kernel tracks dirty pages for pre-copy
    tracker: str = (
        ""  # pre-copy's dirty tracker: "soft-dirty" | "uffd-wp" | "none" ("": not probed)
    )
    lazy_pages: bool = False  # post-copy works here (a real lazy round trip passed)
    lazy_pages_reason: str = ""  # why not
    page_server: bool = False  # a dump's pages can stream into this node's CRIU page server
    simulated: bool = False
    bits: int = 0  # the userland's word size: 64, or 32 for a 32-bit userland (another arch)
    page_size: int = 0  # bytes: 4096, 16384 on a Raspberry Pi 5's default kernel
    kernel: str = ""  # uname -r
    lacks: tuple[Need, ...] = ()  # what the kernel probe found missing
    facts: dict[str, Any] = field(default_factory=dict)

    def record(self) -> dict[str, Any]:
        """The ``probe`` entry of the node's record: the facts, then the flags."""
        flags = {k: v for k, v in self.__dict__.items() if k not in ("facts", "lacks")}
        return {**self.facts, **flags, "lacks": [str(n) for n in self.lacks]}
