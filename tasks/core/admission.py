"""Admission: whether a migration may start, and with what, decided before anything moves.

Pure: the request, the two nodes' registry records and the cluster's defaults
in; what the migration record will hold out (:class:`Admitted`), or a
BadRequest / CapabilityError that changes nothing.

>>> from dataclasses import replace
>>> from workers.records import ContainerInfo
>>> pi = NodeRecord("pi1", probe={"arch": "aarch64", "criu_ok": True, "page_server": True},
...                 containers=(ContainerInfo("web", memory_bytes=4 << 20),))
>>> a = admit(MigrationRequest("web", "pi2"), pi, replace(pi, name="pi2"), Defaults())
>>> a.strategy.value, a.options.memory_bytes >> 20, a.options.page_server  # 4 MiB: cold fits
('cold', 4, 'auto')
>>> admit(MigrationRequest("web", "pi2", strategy="precopy"), pi, replace(pi, name="pi2"),
...       Defaults())
Traceback (most recent call last):
...
workers.errors.CapabilityError: precopy needs a dirty tracker (soft-dirty or uffd-wp); pi1's kernel has neither: use delta
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from tasks.core.chooser import Link, Request, Workload, choose, strategy_refusal
from tasks.core.convergence import Fallback, Limits
from tasks.core.netaddr import NodeNet, check_carry, parse
from tasks.core.nodes import NodeRecord
from tasks.core.options import Options
from tasks.core.strategy import Strategy
from tasks.core.transport import check_compression, page_server
from workers.errors import BadRequest, CapabilityError, UnknownContainer

# A container with its own address (--net): a rollback of a cold dump restores it
# from the pages on the source's disk (its connections sit in repair mode after the
# dump); post-copy carries its connections too (workers.runtimes.netlock).
NET_PAGES = "it has its own address: a rollback restores it from the pages on the source"
PODMAN_NOT_LAZY = "it is a Podman container: Podman 4.3's checkpoint has no lazy pages"
PODMAN_PAGES = "it is a Podman container: Podman's checkpoint writes its pages into its archive"
# runc streams only from a paused container it checkpoints --leave-running: a fixed
# 250-300 ms more in the freeze, slower than files up to 256 MiB (docs/BENCHMARKS.md)
RUNC_FILES = "a runc dump sends its pages as files unless page_server=on"


@dataclass(frozen=True)
class MigrationRequest:
    """What a caller asks for (``Ferry.migrate``'s arguments, typed)."""

    container: str
    to: str
    strategy: Strategy | str = Strategy.AUTO
    downtime_limit_ms: float = 300.0
    max_iterations: int = 10
    goal_unchanged: float = 0.70
    fallback: Fallback = "postcopy"
    hard_downtime_cap: bool = False
    bandwidth_bps: float | None = None  # this migration's cap on the data plane
    page_server: str | None = None  # None: the cluster's default
    compression: str | None = None  # None: the cluster's default
    evacuation: str = ""  # the evacuation asking (its id, checked): told when it ends


@dataclass(frozen=True)
class Defaults:
    """The cluster's settings that shape every migration (tasks.config.settings)."""

    link_bps: float = 125e6  # this pair's measured rate, else the configured one
    freeze_overhead_ms: float = 250.0
    timeout_action: str = "abort"
    page_server: str = "auto"
    compression: str = "auto"
    link_source: str = "configured"
    dump_bps: float | None = None  # the source's measured full-dump speed (None: not yet)


@dataclass(frozen=True)
class Admitted:
    """What the migration record starts with."""

    asked: Strategy
    strategy: Strategy
    reason: str
    limits: Limits
    options: Options
    sync: tuple[str, ...]


def admit(req: MigrationRequest, src: NodeRecord, dst: NodeRecord, defaults: Defaults) -> Admitted:
    """Admit ``req`` from node record ``src`` (which runs the container) to ``dst``."""
    if src.name == dst.name:
        raise BadRequest(f"{req.container} already runs on {dst.name}")
    limits = Limits(
        max_iterations=req.max_iterations,
        goal_unchanged=req.goal_unchanged,
        downtime_limit_ms=req.downtime_limit_ms,
        fallback=req.fallback,
        hard_downtime_cap=req.hard_downtime_cap,
    )
    src_caps, dst_caps = src.caps, dst.caps
    for node in (src_caps, dst_caps):
        if not node.criu_ok:
            raise CapabilityError(f"{node.name} cannot run CRIU: {node.criu_reason}")
    held = src.container(req.container)
    if held is None:
        raise UnknownContainer(req.container)
    net = held.net
    if net:  # the destination must carry its address
        check_carry(NodeNet.of(dst), parse(net))
    podman = held.labels.get("oci.engine") == "podman"  # it moves through Podman's checkpoint
    if podman:
        src_caps, dst_caps = (
            replace(c, lazy_pages=False, lazy_pages_reason=PODMAN_NOT_LAZY)
            for c in (src_caps, dst_caps)
        )
    cap = req.bandwidth_bps
    if cap is not None and not 0 < cap < math.inf:  # NaN too
        raise BadRequest(f"bandwidth must be > 0 bytes/s and finite, not {cap}")
    choice = choose(
        src_caps,
        dst_caps,
        Workload(held.memory_bytes),
        Link(
            min(defaults.link_bps, cap or math.inf),
            overhead_ms=defaults.freeze_overhead_ms,
            dump_bps=defaults.dump_bps,
        ),
        Request(req.strategy, req.downtime_limit_ms),
    )
    compression = check_compression(req.compression or defaults.compression)
    pages, pages_why = page_server(
        req.page_server or defaults.page_server, choice.strategy, src_caps, dst_caps
    )
    if (net or podman) and pages != "off":
        why = NET_PAGES if net else PODMAN_PAGES
        if pages == "on":
            raise CapabilityError(f"page_server=on, but {why}: use page_server=auto")
        pages, pages_why = "off", why
    elif pages == "auto" and src_caps.runtime == "oci":
        pages, pages_why = "off", RUNC_FILES
    options = Options(
        memory_bytes=held.memory_bytes,
        timeout_action=defaults.timeout_action,
        page_server=pages,
        page_server_why=pages_why,
        link_bps=defaults.link_bps,
        link_source=defaults.link_source,
        compression=compression,
        lazy_ok=strategy_refusal(Strategy.POSTCOPY, src_caps, dst_caps) is None,
        bandwidth_bps=cap,
        evacuation=req.evacuation,
    )
    return Admitted(
        Strategy.parse(req.strategy), choice.strategy, choice.reason, limits, options, held.sync
    )
