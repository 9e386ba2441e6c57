"""What each piece of a node's kernel buys, what its absence costs, and what to do.

Pure: a node's probe (its registry record's ``probe``) in, a :class:`Diagnosis`
out, for ``ferry doctor`` and the docs' "Kernel requirements" table. The
pieces are :class:`workers.records.Need`; the strategies a node keeps are the
chooser's (:func:`tasks.core.chooser.runs`).

Raspberry Pi OS on a Pi 4 (bcm2711_defconfig) has CHECKPOINT_RESTORE but no
USERFAULTFD and none of the *_DIAG options, and arm64 has no soft-dirty::

    >>> pi = NodeRecord("pi4", probe={"arch": "aarch64", "criu_ok": True, "bits": 64,
    ...     "page_size": 4096, "lacks": ["userfaultfd", "soft_dirty", "unix_diag",
    ...                                  "packet_diag", "netlink_diag"]})
    >>> d = diagnose(pi)
    >>> [s.value for s in d.strategies]
    ['cold', 'delta']
    >>> [m.need.value for m in d.missing][:2]
    ['userfaultfd', 'soft_dirty']
    >>> d.missing[0].lost
    ('postcopy', 'hybrid')
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from tasks.core.chooser import runs
from tasks.core.nodes import NodeRecord
from tasks.core.strategy import Strategy
from workers.records import Need

ALL = tuple(s.value for s in Strategy if s.concrete)
LAZY = ("postcopy", "hybrid")
FRAGMENT = "ops/kernel/ferry.config"
UBUNTU = "or run Ubuntu's linux-raspi kernel, which has it (docs/operating.md)"


@dataclass(frozen=True)
class Requirement:
    """One piece of the kernel: what it is, what lacking it costs, what to do."""

    need: Need
    what: str  # the kernel option or setting
    lost: tuple[str, ...]  # the strategies a node without it cannot run
    costs: str  # what else it costs: which containers cannot move
    fix: str


REQUIREMENTS: tuple[Requirement, ...] = (
    Requirement(
        Need.CHECKPOINT_RESTORE,
        "CONFIG_CHECKPOINT_RESTORE",
        ALL,
        "CRIU cannot run: no container moves to or from this node",
        "a kernel with CONFIG_CHECKPOINT_RESTORE=y (Pi OS and linux-raspi have it)",
    ),
    Requirement(
        Need.NAMESPACES,
        "CONFIG_NAMESPACES with PID_NS, UTS_NS, IPC_NS, NET_NS",
        ALL,
        "ferry's containers start in their own pid, uts and ipc namespaces",
        "a kernel with the namespaces on (every distribution kernel has them)",
    ),
    Requirement(
        Need.USERFAULTFD,
        "CONFIG_USERFAULTFD",
        LAZY,
        "no post-copy: a container that dirties memory fast moves with a long pause",
        f"build the kernel with {FRAGMENT} (Raspberry Pi OS lacks it), {UBUNTU}; "
        "a worker that is not root also needs sysctl vm.unprivileged_userfaultfd=1",
    ),
    Requirement(
        Need.SOFT_DIRTY,
        "CONFIG_MEM_SOFT_DIRTY",
        ("hybrid",),
        "pre-copy tracks its pages with uffd-wp where the kernel has that (precopy is lost "
        "only without both), else delta (snapshots, changed blocks) does its work",
        "none on arm64 (the architecture has no soft-dirty bit): a kernel with uffd-wp "
        "(Linux >= 6.10 on arm64) gives precopy; on x86, CONFIG_MEM_SOFT_DIRTY=y",
    ),
    Requirement(
        Need.UFFD_WP,
        "userfaultfd write-protect + PAGEMAP_SCAN (Linux >= 6.7)",
        (),
        "without soft-dirty too (every arm64 kernel), no precopy: delta's snapshots freeze "
        "the tree for a whole dump every pass",
        "Linux >= 6.7 (arm64: >= 6.10) with CONFIG_USERFAULTFD and CONFIG_PTE_MARKER_UFFD_WP, "
        "and a worker with CAP_SYS_PTRACE (ferry injects userfaultfd(2) into the container)",
    ),
    Requirement(
        Need.UNIX_DIAG,
        "CONFIG_UNIX_DIAG",
        (),
        "a container with a unix socket (most real programs) fails to dump, whatever "
        "the strategy (CRIU: 'The sock diag infrastructure is incomplete')",
        f"CONFIG_UNIX_DIAG=y or m ({FRAGMENT}); on linux-raspi it is a module: modprobe unix_diag",
    ),
    Requirement(
        Need.INET_DIAG,
        "CONFIG_INET_DIAG, INET_TCP_DIAG, INET_UDP_DIAG",
        (),
        "a container with a TCP or UDP socket fails to dump (its connections cannot move)",
        f"CONFIG_INET_DIAG=y with INET_TCP_DIAG and INET_UDP_DIAG ({FRAGMENT})",
    ),
    Requirement(
        Need.PACKET_DIAG,
        "CONFIG_PACKET_DIAG",
        (),
        "a container with a packet socket (a DHCP client, tcpdump) fails to dump",
        f"CONFIG_PACKET_DIAG=y or m ({FRAGMENT})",
    ),
    Requirement(
        Need.NETLINK_DIAG,
        "CONFIG_NETLINK_DIAG",
        (),
        "a container with a netlink socket (route or udev watchers) fails to dump",
        f"CONFIG_NETLINK_DIAG=y or m ({FRAGMENT})",
    ),
    Requirement(
        Need.PIPE_MAX_SIZE,
        "fs.pipe-max-size >= 4 MiB",
        LAZY,
        "CRIU's page server needs 4 MiB pipes: no post-copy, and a cold dump's pages cannot stream",
        "sysctl fs.pipe-max-size=4194304, or let ferry raise it (FERRY_ALLOW_PIPE_MAX_SIZE=1)",
    ),
)


@dataclass(frozen=True)
class Diagnosis:
    """One node, as ``ferry doctor`` shows it."""

    node: str
    strategies: tuple[Strategy, ...]  # what it can run with a peer like itself
    tracker: str  # pre-copy's dirty tracker: soft-dirty, uffd-wp or none
    missing: tuple[Requirement, ...]  # in REQUIREMENTS order
    notes: tuple[str, ...]  # other findings: CRIU, page size, userland, an old probe


def diagnose(rec: NodeRecord) -> Diagnosis:
    """What the node ``rec`` has, what it lacks, and what each missing piece costs."""
    node, p = rec.caps, rec.probe
    notes: list[str] = []
    if not node.criu_ok and node.runtime != "sim":
        why = f" ({node.criu_reason})" if node.criu_reason else ""
        notes.append(
            f"CRIU does not work{why}: every strategy is lost; install it with "
            "ops/install-criu.sh --from criu-4.1.1-ARCH.tar.gz (built once by --package)"
        )
    if not node.page_size:
        notes.append("probed by an older ferry: restart its worker to probe the kernel")
    elif node.page_size != 4096:
        notes.append(
            f"{node.page_size // 1024} KiB pages: it pairs only with nodes of the same page "
            "size; on a Pi 5, kernel=kernel8.img in /boot/firmware/config.txt gives 4 KiB"
        )
    if node.bits == 32:
        notes.append("a 32-bit userland: it pairs only with other 32-bit nodes of its arch")
    if p.get("unprivileged_userfaultfd") == 0 and not p.get("root", True):
        notes.append("vm.unprivileged_userfaultfd=0 and the worker is not root: no lazy pages")
    if node.lazy_pages_reason and Need.USERFAULTFD not in node.lacks:
        notes.append(f"lazy pages: {node.lazy_pages_reason}")
    missing = tuple(r for r in REQUIREMENTS if r.need in node.lacks)
    return Diagnosis(node.name, tuple(runs(node)), node.dirty_tracker, missing, tuple(notes))


def peers(records: Mapping[str, NodeRecord]) -> dict[str, list[str]]:
    """The nodes grouped by what a CRIU image needs of both ends: arch, userland, page size."""
    groups: dict[str, list[str]] = {}
    for name in sorted(records):
        n = records[name].caps
        bits = f"{n.bits}-bit" if n.bits else "?-bit"
        page = f"{n.page_size // 1024} KiB pages" if n.page_size else "? pages"
        groups.setdefault(f"{n.arch} {bits} {page}", []).append(name)
    return groups
