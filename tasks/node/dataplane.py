"""The data plane as the phases use it: where the destination listens, what the
link carries, a dir of images sent as files, a dump's pages streamed or its pages
image sent as it is written.

The bytes themselves move in :mod:`workers.dataplane.transfer` and
:mod:`workers.dataplane.pagestream`; this module turns a migration record into their
arguments: the address the destination's PREPARE signed, a fresh token per
connection, the migration's bandwidth cap and the link's bandwidth.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from tasks.core import transport
from tasks.core.machine import estimates
from tasks.core.migration import Migration
from tasks.messaging import auth
from tasks.node.context import NodeContext, Progress
from workers import failpoints
from workers.dataplane import transfer
from workers.dataplane.tail import Tail
from workers.dataplane.throttle import TokenBucket
from workers.dataplane.tokens import issue_token
from workers.dataplane.wire import HAVE_ZSTD
from workers.errors import IntegrityError, PermanentError
from workers.records import PagesTarget

FROZEN_TIMEOUT_S = 10.0  # silence on the data plane that ends a freeze-window transfer


def dst_address(ctx: NodeContext, m: Migration) -> tuple[str, int]:
    """The destination's data-plane address, as its PREPARE signed it."""
    prepared = m.results.get("prepare", {})
    address = str(prepared.get("address", ""))
    auth.verify(ctx.secret, prepared.get("address_mac"), "address", m.id, m.dst, address)
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise PermanentError(f"{m.dst} gave no data-plane address")
    return host, int(port)


def route(ctx: NodeContext, m: Migration) -> transport.Route:
    """What this node knows of the way to ``m``'s destination: loopback, the lowest known
    rate, and (where compression could matter) how fast this CPU compresses."""
    host = dst_address(ctx, m)[0]
    rates = [r for r in (m.options.bandwidth_bps, link_bps(m)) if r]
    way = transport.Route(transfer.is_loopback(host), min(rates, default=None), zstd=HAVE_ZSTD)
    if not transport.may_compress(m.options.compression, way):
        return way  # the speed would not change a thing: do not measure it
    return replace(way, compress_bps=transfer.compressor_bps())


def streams_pages(ctx: NodeContext, m: Migration) -> bool:
    """Whether this migration's final dump streams its pages (tasks.core.transport.page_server)."""
    return transport.stream_pages(m.options.page_server, m.options.compression, route(ctx, m))


def tails_pages(ctx: NodeContext, m: Migration) -> bool:
    """Whether this final dump's pages image goes out as CRIU writes it
    (tasks.core.transport.tail_pages)."""
    return transport.tail_pages(m.options.compression, route(ctx, m))


# The tails this worker process started, by migration: a final dump starts one, the
# TRANSFER that follows it inline in this process finishes it (one run by another process
# finds none here, and its put finds in place whatever the tail landed).
_TAILS: dict[str, Tail] = {}


def start_tail(ctx: NodeContext, m: Migration, d: Path, sub: str) -> Tail:
    """The pages image of the dump into ``d``, sent while it is written (started; the
    TRANSFER of ``m`` in this process finishes it: :func:`send_final`)."""
    own = TokenBucket(m.options.bandwidth_bps) if m.options.bandwidth_bps else None
    tail = Tail(
        dst_address(ctx, m),
        lambda: issue_token(ctx.secret, m.id, m.src, m.dst, time.time()),
        m.id,
        sub,
        d,
        lambda name: name.startswith("pages-") and name.endswith(".img"),
        buckets=[b for b in (own, ctx.uplink) if b is not None],
        timeout_s=FROZEN_TIMEOUT_S,
    )
    tail.start()
    _TAILS[m.id] = tail
    return tail


def drop_tail(m: Migration) -> None:
    """Forget ``m``'s tail: its dump failed (the tail was cancelled) or it rolls back."""
    tail = _TAILS.pop(m.id, None)
    if tail is not None:
        tail.cancel()


def send_final(
    ctx: NodeContext, m: Migration, d: Path, sub: str, progress: Progress
) -> dict[str, Any]:
    """The final dump's images, those its tail did not send first, then the tail's file
    once it landed (sent again by a put, should it not have). The tail's last bytes and
    digest overlap the other images' put."""
    started = time.monotonic()
    tail = _TAILS.pop(m.id, None)
    leave_out = tail.file if tail is not None else None
    result = send_dir(ctx, m, d, sub, progress, frozen=True, leave_out=leave_out)
    if tail is None or leave_out is None:
        return result
    landed = tail.finish()
    if landed is None:  # every other file is in place: the put sends this one alone,
        try:  # on from what a cut tail left
            again = send_dir(ctx, m, d, sub, progress, frozen=True)
        except IntegrityError:  # those bytes were not the finished file's: all of it again
            again = send_dir(ctx, m, d, sub, progress, frozen=True)
        cut = again["bytes"] < (d / leave_out).stat().st_size
        result = {
            **again,
            "bytes": result["bytes"] + again["bytes"],
            "resumed": again["resumed"] + cut,
        }
    else:
        result["tail"] = {
            "file": landed.name,
            "bytes": landed.bytes,
            "wall_ms": round(landed.seconds * 1000, 3),
            "finish_ms": round(landed.finish_seconds * 1000, 3),  # after the dump
            "finish_bytes": landed.finish_bytes,
            "hash_ms": round(landed.hash_seconds * 1000, 3),
        }
    return {**result, "wall_ms": round((time.monotonic() - started) * 1000, 3)}


def link_bps(m: Migration) -> float | None:
    """The link's bandwidth as this migration knows it: measured by its passes, else configured."""
    if m.passes:
        measured = estimates(m).bandwidth_bps
        if 0 < measured < float("inf"):
            return measured
    return m.options.link_bps or None


def send_dir(
    ctx: NodeContext,
    m: Migration,
    d: Path,
    sub: str,
    progress: Progress | None,
    frozen: bool = False,
    leave_out: str | None = None,
) -> dict[str, Any]:
    """Send the image files of ``d`` (but ``leave_out``) to the destination's
    ``incoming/<mid>/<sub>``.

    ``frozen``: the container is frozen while this runs, so a dead link gives
    up after seconds (and the migration rolls back) rather than minutes.
    Compressed when the link (:func:`link_bps`) is slow enough for it to pay.
    """
    files = sorted(
        p
        for p in d.iterdir()
        if p.is_file()
        and p.name != leave_out
        and not p.is_symlink()
        and not p.name.endswith(".done")
        and p.suffix != ".log"
        and not p.name.endswith(".socket")
    )
    total = sum(p.stat().st_size for p in files)
    started = time.monotonic()
    last = [0.0]

    def report(sent: int, _total: int) -> None:
        now = time.monotonic()
        if progress is not None and (now - last[0] >= 0.25 or sent >= total):
            last[0] = now
            rate = sent / max(now - started, 1e-6)
            progress(
                {
                    "bytes_sent": sent,
                    "bytes_total": total,
                    "rate_bps": round(rate),
                    "eta_s": round((total - sent) / rate, 2) if rate else None,
                }
            )

    way = route(ctx, m)
    paths = list(files)
    ratio = (
        transfer.sample_ratio(paths) if transport.may_compress(m.options.compression, way) else 1
    )
    stats = transfer.send_files(
        dst_address(ctx, m),
        lambda: issue_token(ctx.secret, m.id, m.src, m.dst, time.time()),
        m.id,
        [(p, p.name) for p in files],
        subdir=sub,
        progress=report,
        bandwidth_bps=m.options.bandwidth_bps,  # per migration, if capped
        bucket=ctx.uplink,  # the node's, if it has one: the urgent slot's first
        compression=transport.codec(m.options.compression, way, ratio),
        timeout_s=FROZEN_TIMEOUT_S if frozen else 30.0,
        retries=1 if frozen else 3,
    )
    return {
        "bytes": stats.bytes,
        "files": stats.files,
        "wall_ms": round(stats.seconds * 1000, 3),
        "resumed": stats.resumed,
        "codec": stats.codec,
    }


def pages_target(ctx: NodeContext, m: Migration, sub: str, progress: Progress) -> PagesTarget:
    """Where a cold dump streams its pages: the destination's page server, behind a token."""

    def report(sent: int, seconds: float) -> None:
        progress(
            {
                "bytes_sent": sent,
                "rate_bps": round(sent / seconds) if seconds > 0 else None,
                "bytes_total": m.options.memory_bytes or None,  # about what CRIU dumps
                "stream": "pages",
            }
        )

    return PagesTarget(
        dst_address(ctx, m),
        lambda: issue_token(ctx.secret, m.id, m.src, m.dst, time.time()),
        m.id,
        sub,
        bandwidth_bps=m.options.bandwidth_bps,
        progress=report,
        stall_s=FROZEN_TIMEOUT_S,
        corrupt=failpoints.corrupting(ctx.failpoints, "pages"),
    )
