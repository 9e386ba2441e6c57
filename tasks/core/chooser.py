"""The strategy chooser: which migration strategy a pair of nodes can run, and which to use.

Pure: the two nodes' probed capabilities, the workload, the link and the
request in; a :class:`Choice` out, or :class:`CapabilityError` naming the node
and what to use instead.

What each strategy needs (on top of a pair that can migrate at all):

``cold``      nothing more.
``delta``     nothing more: repeated ``criu dump --leave-running`` snapshots.
``precopy``   a dirty tracker on the SOURCE: soft-dirty (CRIU feature
              ``mem_dirty_track``) or else uffd-wp (async userfaultfd
              write-protect with PAGEMAP_SCAN, ``NodeCaps.tracker``).
``postcopy``  lazy pages on both nodes: uffd + uffd-noncoop on the DESTINATION
              and a working lazy-pages probe on each (``NodeCaps.lazy_pages``).
``hybrid``    postcopy's needs and soft-dirty on the source (CRIU's lazy dump skips
              only the pages of a soft-dirty pre-dump chain).

A pair can migrate at all when both nodes share an architecture, a userland
word size, a page size and a runtime, both kernels have CHECKPOINT_RESTORE
and the namespaces, CRIU works on both (unless both run ``sim``), the
destination is not cordoned and has memory and disk for the workload plus
10 % headroom (the images are sized as the whole memory: a post-copy that
falls back needs them all).

``auto``: ``cold`` when a full copy already fits the downtime limit, unless
post-copy's one short freeze is clearly shorter (by 10 % and 20 ms: nearer
than that, the simpler strategy wins); else ``postcopy`` (dirty rate >=
bandwidth: pre-copy can never converge) or ``hybrid`` when lazy pages work and
the workload dirties fast (>= 30 % of the bandwidth, or unmeasured and large);
else ``precopy`` with a tracker, else ``delta`` (or post-copy, when a delta
pass would freeze the tree clearly longer). All ``*_bps`` are bytes per second.

Worked example: 512 MiB dirtying 40 MiB/s over a 1 GbE link (~112 MiB/s)::

    >>> pi1 = NodeCaps("pi-01", "aarch64", "criu", True, False, True, "",
    ...                4 << 30, 32 << 30, False)
    >>> pi2 = NodeCaps("pi-02", "aarch64", "criu", True, True, True, "",
    ...                4 << 30, 32 << 30, False)
    >>> c = choose(pi1, pi2, Workload(512 << 20, 40 << 20), Link(112 << 20, 0.3),
    ...            Request("auto", 300))
    >>> c.strategy.value, c.iterative
    ('postcopy', None)
    >>> try:
    ...     choose(pi1, pi2, Workload(512 << 20), Link(112 << 20, 0.3), Request("precopy", 300))
    ... except CapabilityError as err:
    ...     print(err)
    precopy needs a dirty tracker (soft-dirty or uffd-wp); pi-01's kernel has neither: use delta or postcopy
"""

from __future__ import annotations

from dataclasses import dataclass

from tasks.core.strategy import CONCRETE, Strategy
from workers.errors import BadRequest, CapabilityError
from workers.records import Need

FIXED_OVERHEAD_MS = 250.0  # default: CRIU dump + restore of a small tree on a Pi 4 (estimate)
# default speed of a full dump into local images, until the source measured its own: an SD
# card or a slow SSD (a delta pass freezes the tree that long, every pass)
DUMP_BPS = 100e6
ROUND_TRIPS = 3  # control messages inside the freeze: dump, transfer, restore
FAST_DIRTY = 0.30  # dirtying >= 30 % of the bandwidth: pre-copy converges badly
LARGE = 10.0  # unmeasured and a full copy takes >= 10x the limit: treat as fast
HEADROOM = 0.10
# CRIU's lazy-pages daemon sends the rest in background chunks of up to 4 MiB: a
# post-copy's first fault waits behind one
LAZY_CHUNK = 4 << 20
TIE, TIE_MS = 0.10, 20.0  # pauses nearer than 10 % or 20 ms: the simpler strategy wins
# What to suggest instead of a strategy the nodes cannot run, best first.
INSTEAD: dict[Strategy, tuple[Strategy, ...]] = {
    Strategy.PRECOPY: (Strategy.DELTA, Strategy.POSTCOPY),
    Strategy.POSTCOPY: (Strategy.PRECOPY, Strategy.DELTA),
    Strategy.HYBRID: (Strategy.PRECOPY, Strategy.DELTA, Strategy.POSTCOPY),
}


@dataclass(frozen=True)
class NodeCaps:
    """What a node can do, as probed (see workers.criu.probe)."""

    name: str
    arch: str  # "x86_64", "aarch64", ...
    runtime: str  # "criu" | "oci" | "sim"
    criu_ok: bool
    soft_dirty: bool
    lazy_pages: bool  # uffd + uffd-noncoop and a working lazy-pages probe
    lazy_pages_reason: str  # why not, when lazy_pages is False
    mem_free_bytes: int
    disk_free_bytes: int
    cordoned: bool = False
    criu_reason: str = ""  # why not, when criu_ok is False
    page_server: bool = False  # a dump's pages can stream into its CRIU (not the sim's)
    bits: int = 0  # the userland's word size; 0: not probed (a record from before the probe)
    page_size: int = 0  # bytes; 0: not probed
    lacks: frozenset[Need] = frozenset()  # kernel pieces the probe found missing
    tracker: str = ""  # workers.records.Tracker; "": from soft_dirty (a record from before it)

    @property
    def dirty_tracker(self) -> str:
        """The tracker pre-copy uses on this node: soft-dirty, uffd-wp or none."""
        if self.soft_dirty:
            return "soft-dirty"
        return "uffd-wp" if self.tracker == "uffd-wp" else "none"


@dataclass(frozen=True)
class Workload:
    memory_bytes: int
    dirty_rate_bps: float | None = None  # None: not measured yet


@dataclass(frozen=True)
class Link:
    bandwidth_bps: float
    rtt_ms: float = 0.0
    overhead_ms: float = FIXED_OVERHEAD_MS  # fixed freeze-window cost on these nodes
    dump_bps: float | None = None  # the source's measured full-dump speed into its images


@dataclass(frozen=True)
class Request:
    strategy: Strategy | str = Strategy.AUTO  # a name is parsed: BadRequest if unknown
    downtime_limit_ms: float = 300.0


@dataclass(frozen=True)
class Choice:
    strategy: Strategy  # concrete, never auto
    reason: str
    iterative: Strategy | None = None  # precopy | delta for the pre-copy half, else None


def _mib(n: float) -> str:
    return f"{n / (1 << 20):.0f} MiB"


def _rate(bps: float) -> str:
    return f"{bps / (1 << 20):.1f} MiB/s"


def cold_downtime_ms(wl: Workload, link: Link) -> float:
    """Expected downtime of a cold migration: the whole memory over the link, plus overheads."""
    return (
        wl.memory_bytes / link.bandwidth_bps * 1000.0 + link.overhead_ms + ROUND_TRIPS * link.rtt_ms
    )


def lazy_downtime_ms(link: Link) -> float:
    """Expected pause of a post-copy: the tree without its memory, plus the first
    fault's wait behind one background chunk of pages."""
    return LAZY_CHUNK / link.bandwidth_bps * 1000.0 + link.overhead_ms + ROUND_TRIPS * link.rtt_ms


def clearly_shorter(a_ms: float, b_ms: float) -> bool:
    """Whether a pause of ``a_ms`` beats one of ``b_ms`` by more than a near tie.

    >>> clearly_shorter(250, 300), clearly_shorter(290, 300), clearly_shorter(5, 20)
    (True, False, False)
    """
    return a_ms * (1 + TIE) < b_ms and b_ms - a_ms > TIE_MS


def _kib(n: int) -> str:
    return f"{n // 1024} KiB"


def node_refusal(node: NodeCaps) -> str | None:
    """Why ``node`` can neither send nor take a container, or None if it can."""
    for need, option in (
        (Need.CHECKPOINT_RESTORE, "CONFIG_CHECKPOINT_RESTORE"),
        (Need.NAMESPACES, "the pid, uts, ipc, mnt and net namespaces"),
    ):
        if need in node.lacks:
            return f"{node.name}'s kernel lacks {option}: see `ferry doctor {node.name}`"
    if not node.criu_ok:
        why = f" ({node.criu_reason})" if node.criu_reason else ""
        return f"CRIU does not work on {node.name}{why}: run ops/install-criu.sh there"
    return None


def pair_refusal(src: NodeCaps, dst: NodeCaps) -> str | None:
    """Why no container can move from ``src`` to ``dst`` at all, or None if it can.

    A page size or word size that one of them never probed (0) is not held against it.
    """
    if src.arch != dst.arch:
        return (
            f"a CRIU image never crosses architectures: {src.name} is {src.arch}, "
            f"{dst.name} is {dst.arch}"
        )
    if src.bits and dst.bits and src.bits != dst.bits:
        return (
            f"a CRIU image never crosses userlands: {src.name} runs a {src.bits}-bit one, "
            f"{dst.name} a {dst.bits}-bit one"
        )
    if src.page_size and dst.page_size and src.page_size != dst.page_size:
        return (
            f"a CRIU image never crosses page sizes: {src.name} has {_kib(src.page_size)} "
            f"pages, {dst.name} {_kib(dst.page_size)} (a Pi 5 boots 4 KiB pages from "
            "kernel8.img: `ferry doctor`)"
        )
    if src.runtime != dst.runtime:
        return (
            f"{src.name} runs the {src.runtime} runtime and {dst.name} runs {dst.runtime}: "
            "a migration stays within one runtime"
        )
    for node in (src, dst):
        refusal = node_refusal(node)
        if refusal:
            return refusal
    if dst.cordoned:
        return f"{dst.name} is cordoned: uncordon it or pick another destination"
    return None


def fit_refusal(dst: NodeCaps, wl: Workload) -> str | None:
    """Why ``dst`` has no room for ``wl`` (memory, then disk for the images), or None."""
    need = wl.memory_bytes * (1 + HEADROOM)
    if dst.mem_free_bytes < need:
        return (
            f"{dst.name} has {_mib(dst.mem_free_bytes)} free memory; the container needs "
            f"{_mib(wl.memory_bytes)} + {HEADROOM:.0%} headroom: pick a node with more"
        )
    if dst.disk_free_bytes < need:
        return (
            f"{dst.name} has {_mib(dst.disk_free_bytes)} free disk; the images need up to "
            f"{_mib(need)}: free space there or pick another node"
        )
    return None


def strategy_refusal(strategy: Strategy | str, src: NodeCaps, dst: NodeCaps) -> str | None:
    """Why this pair cannot run ``strategy`` (pair assumed able to migrate), or None."""
    strategy = Strategy.parse(strategy)
    if strategy.needs_tracker and strategy.lazy and not src.soft_dirty:
        # CRIU's lazy dump skips only the pages a soft-dirty pre-dump chain sent.
        return f"{strategy} needs soft-dirty tracking for its pre-copy half; {src.name}'s kernel has none"
    if strategy.needs_tracker and src.dirty_tracker == "none":
        return (
            f"{strategy} needs a dirty tracker (soft-dirty or uffd-wp); "
            f"{src.name}'s kernel has neither"
        )
    if strategy.lazy:
        for node in (dst, src):
            if not node.lazy_pages:
                why = f" ({node.lazy_pages_reason})" if node.lazy_pages_reason else ""
                if Need.USERFAULTFD in node.lacks:
                    why = " (its kernel lacks CONFIG_USERFAULTFD)"
                return (
                    f"{strategy} needs userfaultfd lazy pages on both nodes; "
                    f"{node.name} has none{why}"
                )
    return None


def usable(src: NodeCaps, dst: NodeCaps) -> list[Strategy]:
    """The concrete strategies this pair can run, in Strategy order."""
    if pair_refusal(src, dst) is not None:
        return []
    return [s for s in CONCRETE if strategy_refusal(s, src, dst) is None]


def runs(node: NodeCaps) -> list[Strategy]:
    """The concrete strategies ``node`` can run with a peer like itself, in Strategy order."""
    if node_refusal(node) is not None:
        return []
    return [s for s in CONCRETE if strategy_refusal(s, node, node) is None]


def choose(src: NodeCaps, dst: NodeCaps, wl: Workload, link: Link, req: Request) -> Choice:
    """Pick the strategy for moving ``wl`` from ``src`` to ``dst``; CapabilityError if none."""
    asked = Strategy.parse(req.strategy)
    _check(src, dst, wl, link, req)
    refusal = pair_refusal(src, dst) or fit_refusal(dst, wl)
    if refusal:
        raise CapabilityError(refusal)
    tracker = src.dirty_tracker
    iterative = Strategy.DELTA if tracker == "none" else Strategy.PRECOPY
    cold_ms = cold_downtime_ms(wl, link)
    limit = req.downtime_limit_ms
    if asked is not Strategy.AUTO:
        refusal = strategy_refusal(asked, src, dst)
        if refusal:
            ok = [s for s in INSTEAD[asked] if strategy_refusal(s, src, dst) is None]
            raise CapabilityError(f"{refusal}: use {' or '.join(ok)}")
        it = {
            Strategy.PRECOPY: Strategy.PRECOPY,
            Strategy.DELTA: Strategy.DELTA,
            Strategy.HYBRID: Strategy.PRECOPY,
        }.get(asked)
        why = f"requested {asked}"
        if asked is Strategy.COLD and cold_ms > limit:
            why += f" (expected downtime ~{cold_ms:.0f} ms, over the {limit:g} ms limit)"
        return Choice(asked, why, it)

    cold_why = (
        f"cold copy of {_mib(wl.memory_bytes)} at {_rate(link.bandwidth_bps)} "
        f"+ {link.overhead_ms + ROUND_TRIPS * link.rtt_ms:.0f} ms overhead is ~{cold_ms:.0f} ms"
    )
    lazy_no = strategy_refusal(Strategy.POSTCOPY, src, dst)
    if cold_ms <= limit:
        why = f"auto: {cold_why} <= {limit:g} ms limit"
        lazy_ms = lazy_downtime_ms(link)
        if lazy_no is None and clearly_shorter(lazy_ms, cold_ms):
            return Choice(Strategy.POSTCOPY, f"{why}; postcopy's one freeze is ~{lazy_ms:.0f} ms")
        return Choice(Strategy.COLD, why)
    why = f"auto: {cold_why} > {limit:g} ms limit"
    bw, dirty = link.bandwidth_bps, wl.dirty_rate_bps
    if dirty is None:
        fast = cold_ms >= LARGE * limit
        why += f"; dirty rate unmeasured and the workload is {'large' if fast else 'small'}"
    else:
        fast = dirty >= FAST_DIRTY * bw
        why += f"; dirty rate {_rate(dirty)} is {dirty / bw:.0%} of the bandwidth"
    pre = (
        f"precopy ({tracker})"
        if iterative is Strategy.PRECOPY
        else f"delta ({src.name} has no dirty tracker)"
    )
    if fast and lazy_no is None:
        if dirty is not None and dirty >= bw:
            return Choice(Strategy.POSTCOPY, f"{why}: pre-copy cannot converge, postcopy")
        if not src.soft_dirty:
            return Choice(
                Strategy.POSTCOPY, f"{why}: postcopy ({src.name} has no soft-dirty for hybrid)"
            )
        return Choice(Strategy.HYBRID, f"{why}: hybrid, {pre} then postcopy", iterative)
    if fast:
        why += f"; postcopy unavailable ({lazy_no}), the convergence rule will decide"
    if tracker != "soft-dirty":  # delta, or uffd-wp: both dump every page in the freeze
        return _snapshot_or_not(iterative, wl, link, limit, cold_ms, lazy_no, f"{why}: {pre}")
    return Choice(iterative, f"{why}: {pre}", iterative)


def delta_pause_ms(wl: Workload, link: Link) -> float:
    """The pause of a full dump of the memory into local images: each delta pass, and
    the final dump of a uffd-wp pre-copy (CRIU writes every page; ferry sends the new)."""
    return wl.memory_bytes / (link.dump_bps or DUMP_BPS) * 1000.0 + link.overhead_ms


def _snapshot_or_not(
    iterative: Strategy,
    wl: Workload,
    link: Link,
    limit: float,
    cold_ms: float,
    lazy_no: str | None,
    why: str,
) -> Choice:
    """A pre-copy whose freezes each dump the whole memory (delta's every pass, uffd-wp's
    final dump) is only worth it when that fits the limit and post-copy's one freeze is
    not clearly shorter, or it is still shorter than cold's one pause; else post-copy,
    else cold."""
    dump_ms = delta_pause_ms(wl, link)
    what = "each delta pass freezes" if iterative is Strategy.DELTA else "its final dump freezes"
    lazy_ms = lazy_downtime_ms(link)
    if dump_ms <= limit and (lazy_no is not None or not clearly_shorter(lazy_ms, dump_ms)):
        return Choice(iterative, f"{why}; {what} ~{dump_ms:.0f} ms", iterative)
    if dump_ms <= limit:
        return Choice(
            Strategy.POSTCOPY,
            f"{why}; {what} ~{dump_ms:.0f} ms, postcopy's one freeze ~{lazy_ms:.0f} ms",
        )
    measured = "measured" if link.dump_bps else "estimated"
    over = f"; but {what} ~{dump_ms:.0f} ms ({measured} dump speed)"
    if lazy_no is None:
        return Choice(Strategy.POSTCOPY, f"{why}{over}: postcopy, one short freeze")
    if cold_ms <= dump_ms:
        return Choice(Strategy.COLD, f"{why}{over}, no shorter than cold's ~{cold_ms:.0f} ms: cold")
    return Choice(iterative, f"{why}{over}, still shorter than cold's", iterative)


def _check(src: NodeCaps, dst: NodeCaps, wl: Workload, link: Link, req: Request) -> None:
    if src.name == dst.name:
        raise BadRequest(f"source and destination are both {src.name}")
    if req.downtime_limit_ms <= 0 or link.bandwidth_bps <= 0 or link.rtt_ms < 0:
        raise BadRequest("downtime limit and bandwidth must be > 0, rtt >= 0")
    if wl.memory_bytes < 0 or (wl.dirty_rate_bps is not None and wl.dirty_rate_bps < 0):
        raise BadRequest("memory and dirty rate must be >= 0")
