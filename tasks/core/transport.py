"""How a migration's bytes travel: compressed or plain, streamed into the destination's
page server or sent as files.

Pure: what is known of the way to the destination (:class:`Route`: loopback
or not, the lowest known rate, this node's measured compression speed) comes
in; tasks.node.dataplane measures it and workers.dataplane carries the bytes.

>>> pi_link = Route(loopback=False, rate_bps=12.5e6, compress_bps=400e6)
>>> codec("auto", pi_link, ratio=0.3), codec("auto", pi_link, ratio=0.95)
('zstd', 'none')
>>> stream_pages("auto", "auto", pi_link), stream_pages("auto", "auto", Route(True, 12.5e6))
(False, True)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tasks.core.chooser import NodeCaps
from tasks.core.strategy import Strategy
from workers.errors import BadRequest, CapabilityError

COMPRESSIONS = ("auto", "none", "zstd")
MIN_SAMPLE = 8 << 20  # a transfer smaller than this measures latency, not the link


@dataclass(frozen=True)
class Route:
    """What the source knows of the way its bytes go."""

    loopback: bool  # the destination is this machine: the CPU is the only cost
    rate_bps: float | None  # the lowest of the migration's cap and the link's rate; None: unknown
    compress_bps: float | None = None  # how fast this node compresses; None: not measured
    zstd: bool = True  # zstd is installed here


def worth_compressing(rate_bps: float, speed_bps: float, ratio: float) -> bool:
    """Whether compressing makes a transfer at least 20 % faster.

    Compressing and sending overlap, so a byte of the file costs the longer of
    compressing it (``1 / speed_bps``) and sending what it shrinks to
    (``ratio / rate_bps``), against ``1 / rate_bps`` uncompressed.

    >>> worth_compressing(12.5e6, 800e6, 0.3)   # 100 Mbit/s, pages that shrink to 30 %
    True
    >>> worth_compressing(12.5e6, 800e6, 0.95)  # random bytes
    False
    >>> worth_compressing(1.25e9, 800e6, 0.3)   # 10 Gbit/s: the CPU is the bottleneck
    False
    """
    return max(rate_bps / speed_bps, ratio) <= 0.8


def may_compress(compression: str, route: Route) -> bool:
    """Whether ``auto`` could compress on ``route`` at all (so a sample is worth reading)."""
    check_compression(compression)
    return (
        compression == "auto" and route.zstd and route.rate_bps is not None and not route.loopback
    )


def codec(compression: str, route: Route, ratio: float) -> str:
    """``zstd`` or ``none`` for files whose sample compresses to ``ratio`` of its size.

    ``auto`` compresses only toward another host whose rate is known, and only
    when :func:`worth_compressing` says so.
    """
    if compression != "auto":
        return check_compression(compression)
    if not may_compress(compression, route) or route.compress_bps is None:
        return "none"
    assert route.rate_bps is not None
    return "zstd" if worth_compressing(route.rate_bps, route.compress_bps, ratio) else "none"


def stream_pages(mode: str, compression: str, route: Route) -> bool:
    """Whether a final dump streams its pages to the destination's page server (else: files).

    ``on`` and ``off`` say so. ``auto`` streams unless compression could pay
    on this route: the stream saves the local dump's write and read (measured:
    ahead at every size, docs/BENCHMARKS.md) but travels uncompressed, while
    files are compressed when the link is slow for the CPU and they shrink,
    which can halve the wire time. So: stream toward loopback, over an unknown
    or fast link (faster than the CPU compresses, with ideal data), or when
    compression is off.
    """
    if mode != "auto":
        return mode == "on"
    if not may_compress(compression, route) or route.compress_bps is None:
        return True
    assert route.rate_bps is not None
    return not worth_compressing(route.rate_bps, route.compress_bps, 0.0)


def tail_pages(compression: str, route: Route) -> bool:
    """Whether a final dump sent as files sends its pages image while CRIU writes it
    (workers.dataplane.tail), so that only the small images cross after the dump.

    The tail sends plain bytes: it runs wherever the files would travel
    uncompressed anyway (loopback, an unknown or fast link, compression off),
    never where zstd was asked for or ``auto`` could choose it.

    >>> tail_pages("auto", Route(True, None)), tail_pages("none", Route(False, 12.5e6))
    (True, True)
    >>> tail_pages("auto", Route(False, 12.5e6)), tail_pages("zstd", Route(True, None))
    (False, False)
    """
    return check_compression(compression) != "zstd" and not may_compress(compression, route)


def check_compression(compression: str) -> str:
    if compression not in COMPRESSIONS:
        raise BadRequest(f"compression must be auto, none or zstd, not {compression!r}")
    return compression


def measured_bps(phase: str, result: Mapping[str, Any]) -> float | None:
    """The link's rate a finished phase measured (bytes over wall time), if it moved enough.

    >>> measured_bps("transfer", {"bytes": 64 << 20, "wall_ms": 500.0})
    134217728.0
    >>> measured_bps("transfer", {"bytes": 4096, "wall_ms": 1.0}) is None  # too small to tell
    True
    """
    if phase == "precopy":
        p = result.get("pass", {})
        sent, seconds = p.get("bytes_sent", 0), p.get("seconds", 0.0)
    elif phase == "dump" and "pages" in result:  # the pages streamed into the page server
        sent, seconds = result["pages"]["bytes"], result["pages"]["wall_ms"] / 1000
    elif phase == "transfer":
        sent, seconds = result.get("bytes", 0), result.get("wall_ms", 0.0) / 1000
    else:
        return None
    if sent < MIN_SAMPLE or seconds <= 0:
        return None
    return float(sent / seconds)


def measured_dump_bps(phase: str, result: Mapping[str, Any]) -> float | None:
    """How fast the source dumped into its own images (bytes over frozen time), where a
    phase froze the tree for a full dump to disk: a delta pass, or a final dump whose pages
    neither streamed nor stayed behind for post-copy.

    >>> measured_dump_bps("dump", {"image_bytes": 100 << 20, "frozen_ms": 450.0, "freezing_ms": 50.0})
    209715200.0
    """
    if phase == "precopy":
        pause = result.get("pause") or {}
        size, ms = pause.get("image_bytes", 0), pause.get("ms", 0.0)
    elif phase == "dump" and "pages" not in result and "page_server" not in result:
        size = result.get("image_bytes", 0)
        ms = result.get("frozen_ms", 0.0) + result.get("freezing_ms", 0.0)
    else:
        return None
    if size < MIN_SAMPLE or ms <= 0:
        return None
    return float(size / (ms / 1000))


PAGE_SERVER_MODES = ("auto", "on", "off")


def page_server(
    mode: str, strategy: Strategy | str, src: NodeCaps, dst: NodeCaps
) -> tuple[str, str]:
    """The page-server mode a migration gets (``auto``, ``on`` or ``off``), and why.

    Only a ``cold`` migration between two nodes with a page server can stream its dump's
    pages into the destination's CRIU (delta's block diff and pre-copy's
    parent images need the pages on the source's disk; post-copy serves them
    from there): elsewhere it is ``off``, and ``on`` is refused. Whether
    ``auto`` streams is decided at the dump, from the link
    (:func:`stream_pages`).

    >>> pi = NodeCaps("pi-01", "aarch64", "criu", True, True, True, "", 4 << 30, 32 << 30,
    ...               page_server=True)
    >>> page_server("auto", "cold", pi, pi)[0], page_server("auto", "delta", pi, pi)[0]
    ('auto', 'off')
    """
    if mode not in PAGE_SERVER_MODES:
        raise BadRequest(f"page_server must be one of {', '.join(PAGE_SERVER_MODES)}, not {mode!r}")
    if mode == "off":
        return "off", "page server off"
    strategy = Strategy.parse(strategy)
    why_not = (
        "" if strategy is Strategy.COLD else f"{strategy} needs the pages on the source's disk"
    )
    for node in (src, dst):
        if not node.page_server:
            why_not = why_not or f"{node.name} runs no CRIU page server ({node.runtime})"
    if why_not:
        if mode == "on":
            raise CapabilityError(f"page_server=on, but {why_not}: use page_server=auto")
        return "off", why_not
    return mode, "cold between two CRIU nodes: its pages may stream into the destination's CRIU"
