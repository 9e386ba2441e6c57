"""The strategy chooser: tables of choices and refusals, then properties."""

from __future__ import annotations

import doctest
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tasks.core.chooser
from tasks.core.chooser import (
    Link,
    NodeCaps,
    Request,
    Workload,
    choose,
    cold_downtime_ms,
    usable,
)
from tasks.core.strategy import CONCRETE, STRATEGIES
from tasks.core.transport import page_server
from workers.errors import BadRequest, CapabilityError

GiB, MiB = 1 << 30, 1 << 20


def node(name: str, **kw: object) -> NodeCaps:
    base = NodeCaps(
        name=name,
        arch="aarch64",
        runtime="criu",
        criu_ok=True,
        soft_dirty=True,
        lazy_pages=True,
        lazy_pages_reason="",
        mem_free_bytes=4 * GiB,
        disk_free_bytes=32 * GiB,
        cordoned=False,
        page_server=True,
    )
    return replace(base, **kw)  # type: ignore[arg-type]


SRC, DST = node("pi-01"), node("pi-02")
NO_SD = node("pi-01", soft_dirty=False)
NO_LAZY_DST = node("pi-02", lazy_pages=False, lazy_pages_reason="uffd-noncoop missing")
NO_LAZY_SRC = node("pi-01", lazy_pages=False)
UFFD_WP = node("pi-01", soft_dirty=False, tracker="uffd-wp")  # a Pi kernel >= 6.10 with uffd
GBE = Link(112 * MiB, 0.3)
BIG = Workload(512 * MiB, None)
AUTO = Request("auto", 300)


# (id, src, dst, workload, link, request, strategy, iterative, words in reason)
CHOICES = [
    ("small-cold", SRC, DST, Workload(4 * MiB, 50 * MiB), GBE, AUTO, "cold", None, ["<= 300 ms"]),
    (
        "loose-limit-cold",
        SRC,
        NO_LAZY_DST,
        BIG,
        GBE,
        Request("auto", 5000),
        "cold",
        None,
        ["512 MiB"],
    ),
    (  # cold fits the limit, but post-copy's one freeze is clearly shorter
        "loose-limit-postcopy",
        SRC,
        DST,
        BIG,
        GBE,
        Request("auto", 5000),
        "postcopy",
        None,
        ["<= 5000 ms limit", "postcopy's one freeze"],
    ),
    (
        "slow-precopy",
        SRC,
        DST,
        Workload(512 * MiB, 5 * MiB),
        GBE,
        AUTO,
        "precopy",
        "precopy",
        ["4%"],
    ),
    (  # each delta pass would freeze a whole dump (~5 s at the default 100 MB/s)
        "slow-delta-postcopy",
        NO_SD,
        DST,
        Workload(512 * MiB, 5 * MiB),
        GBE,
        AUTO,
        "postcopy",
        None,
        ["no dirty tracker", "each delta pass freezes", "postcopy"],
    ),
    (  # no lazy pages: cold's one pause is no longer than one delta pass
        "slow-delta-cold",
        NO_SD,
        NO_LAZY_DST,
        Workload(512 * MiB, 5 * MiB),
        GBE,
        AUTO,
        "cold",
        None,
        ["no shorter than cold"],
    ),
    (  # a fast disk measured: a delta pass fits the limit
        "fast-dump-delta",
        NO_SD,
        NO_LAZY_DST,
        Workload(512 * MiB, 5 * MiB),
        Link(112 * MiB, 0.3, overhead_ms=100, dump_bps=4e9),
        AUTO,
        "delta",
        "delta",
        ["each delta pass freezes"],
    ),
    (  # the same with lazy pages: a pass's ~234 ms freeze against post-copy's ~137 ms
        "fast-dump-postcopy",
        NO_SD,
        DST,
        Workload(512 * MiB, 5 * MiB),
        Link(112 * MiB, 0.3, overhead_ms=100, dump_bps=4e9),
        AUTO,
        "postcopy",
        None,
        ["each delta pass freezes ~234 ms", "postcopy's one freeze ~137 ms"],
    ),
    (  # a pass freezes barely longer than post-copy would: a near tie, the simpler wins
        "near-tie-delta",
        NO_SD,
        DST,
        Workload(64 * MiB, 5 * MiB),
        Link(112 * MiB, 0.3, overhead_ms=100, dump_bps=4e9),
        AUTO,
        "delta",
        "delta",
        ["each delta pass freezes"],
    ),
    (
        "fast-hybrid",
        SRC,
        DST,
        Workload(512 * MiB, 40 * MiB),
        GBE,
        AUTO,
        "hybrid",
        "precopy",
        ["36%"],
    ),
    (  # no soft-dirty, but the uffd-wp tracker: passes do not freeze, the final dump does
        "fast-dump-uffd-wp-precopy",
        UFFD_WP,
        NO_LAZY_DST,
        Workload(512 * MiB, 5 * MiB),
        Link(112 * MiB, 0.3, overhead_ms=100, dump_bps=4e9),
        AUTO,
        "precopy",
        "precopy",
        ["precopy (uffd-wp)", "its final dump freezes ~234 ms"],
    ),
    (  # CRIU still writes every page in uffd-wp's final dump: ~5.6 s at 100 MB/s
        "slow-uffd-wp-postcopy",
        UFFD_WP,
        DST,
        Workload(512 * MiB, 5 * MiB),
        GBE,
        AUTO,
        "postcopy",
        None,
        ["precopy (uffd-wp)", "its final dump freezes", "postcopy, one short freeze"],
    ),
    (  # hybrid's lazy dump needs a soft-dirty chain: uffd-wp does not make one
        "fast-uffd-wp-postcopy",
        UFFD_WP,
        DST,
        Workload(512 * MiB, 40 * MiB),
        GBE,
        AUTO,
        "postcopy",
        None,
        ["no soft-dirty for hybrid"],
    ),
    (
        "asked-precopy-uffd-wp",
        UFFD_WP,
        NO_LAZY_DST,
        BIG,
        GBE,
        Request("precopy", 300),
        "precopy",
        "precopy",
        ["requested precopy"],
    ),
    (
        "fast-no-soft-dirty-postcopy",
        NO_SD,
        DST,
        Workload(512 * MiB, 40 * MiB),
        GBE,
        AUTO,
        "postcopy",
        None,
        ["no soft-dirty for hybrid"],
    ),
    (
        "too-fast-postcopy",
        SRC,
        DST,
        Workload(512 * MiB, 200 * MiB),
        GBE,
        AUTO,
        "postcopy",
        None,
        ["cannot converge"],
    ),
    (
        "fast-no-lazy",
        SRC,
        NO_LAZY_DST,
        Workload(512 * MiB, 200 * MiB),
        GBE,
        AUTO,
        "precopy",
        "precopy",
        ["uffd-noncoop missing"],
    ),
    (
        "fast-1g-no-soft-dirty",
        NO_SD,
        node("pi-02"),
        Workload(1 * GiB, 90 * MiB),
        GBE,
        AUTO,
        "postcopy",
        None,
        [],
    ),
    (
        "fast-no-lazy-either",
        NO_LAZY_SRC,
        DST,
        Workload(512 * MiB, 90 * MiB),
        GBE,
        AUTO,
        "precopy",
        "precopy",
        ["pi-01 has none"],
    ),
    (
        "unmeasured-small",
        SRC,
        DST,
        Workload(64 * MiB),
        GBE,
        AUTO,
        "precopy",
        "precopy",
        ["unmeasured", "small"],
    ),
    ("unmeasured-large", SRC, DST, Workload(2 * GiB), GBE, AUTO, "hybrid", "precopy", ["large"]),
    (
        "sim-pair",
        node("a", runtime="sim", page_server=False),  # what a sim node publishes
        node("b", runtime="sim", page_server=False),
        Workload(4 * MiB),
        GBE,
        AUTO,
        "cold",
        None,
        [],
    ),
    (
        "rtt-counts",
        SRC,
        DST,
        Workload(1 * MiB),
        Link(112 * MiB, 20.0),
        AUTO,
        "precopy",
        "precopy",
        ["319 ms"],
    ),
    (
        "asked-cold-slow",
        SRC,
        DST,
        BIG,
        GBE,
        Request("cold", 300),
        "cold",
        None,
        ["over the 300 ms limit"],
    ),
    ("asked-delta", SRC, DST, BIG, GBE, Request("delta", 300), "delta", "delta", ["requested"]),
    ("asked-precopy", SRC, DST, BIG, GBE, Request("precopy", 300), "precopy", "precopy", []),
    ("asked-postcopy", SRC, DST, BIG, GBE, Request("postcopy", 300), "postcopy", None, []),
    ("cordoned-src-ok", node("pi-01", cordoned=True), DST, BIG, GBE, AUTO, "hybrid", "precopy", []),
]


@pytest.mark.parametrize(
    ("src", "dst", "wl", "link", "req", "strategy", "iterative", "words"),
    [pytest.param(*row[1:], id=row[0]) for row in CHOICES],
)
def test_choices(src, dst, wl, link, req, strategy, iterative, words) -> None:
    c = choose(src, dst, wl, link, req)
    assert (c.strategy, c.iterative) == (strategy, iterative)
    for w in words:
        assert w in c.reason


# (id, src, dst, workload, request, exact message or fragments)
REFUSALS = [
    (
        "precopy-no-sd",
        node("pi-03", soft_dirty=False),
        DST,
        BIG,
        "precopy",
        (
            "precopy needs a dirty tracker (soft-dirty or uffd-wp); pi-03's kernel has neither: "
            "use delta or postcopy"
        ),
    ),
    (
        "precopy-no-sd-no-lazy",
        node("pi-03", soft_dirty=False),
        NO_LAZY_DST,
        BIG,
        "precopy",
        (
            "precopy needs a dirty tracker (soft-dirty or uffd-wp); pi-03's kernel has neither: "
            "use delta"
        ),
    ),
    (
        "hybrid-uffd-wp",
        UFFD_WP,
        DST,
        BIG,
        "hybrid",
        "hybrid needs soft-dirty tracking for its pre-copy half; pi-01's kernel has none: "
        "use precopy or delta or postcopy",
    ),
    (
        "postcopy-dst",
        SRC,
        NO_LAZY_DST,
        BIG,
        "postcopy",
        (
            "postcopy needs userfaultfd lazy pages on both nodes; pi-02 has none "
            "(uffd-noncoop missing): use precopy or delta"
        ),
    ),
    (
        "hybrid-src",
        NO_LAZY_SRC,
        DST,
        BIG,
        "hybrid",
        "hybrid needs userfaultfd lazy pages on both nodes; pi-01 has none: use precopy or delta",
    ),
    (
        "arch",
        node("pi-01"),
        node("x86-02", arch="x86_64"),
        BIG,
        "cold",
        "a CRIU image never crosses architectures: pi-01 is aarch64, x86-02 is x86_64",
    ),
    ("arch-auto", node("pi-01"), node("x86-02", arch="x86_64"), BIG, "auto", "never crosses"),
    (
        "memory",
        SRC,
        node("pi-02", mem_free_bytes=540 * MiB),
        BIG,
        "auto",
        "pi-02 has 540 MiB free memory; the container needs 512 MiB + 10% headroom",
    ),
    (
        "disk",
        SRC,
        node("pi-02", disk_free_bytes=100 * MiB),
        BIG,
        "delta",
        "pi-02 has 100 MiB free disk",
    ),
    (
        "criu-src",
        node("pi-01", criu_ok=False, criu_reason="criu check failed"),
        DST,
        BIG,
        "cold",
        "CRIU does not work on pi-01 (criu check failed): run ops/install-criu.sh there",
    ),
    ("criu-dst", SRC, node("pi-02", criu_ok=False), BIG, "auto", "CRIU does not work on pi-02"),
    ("mixed-runtime", SRC, node("sim-1", runtime="sim"), BIG, "auto", "stays within one runtime"),
    ("cordoned-dst", SRC, node("pi-02", cordoned=True), BIG, "auto", "pi-02 is cordoned"),
]


@pytest.mark.parametrize(
    ("src", "dst", "wl", "strategy", "message"),
    [pytest.param(*row[1:], id=row[0]) for row in REFUSALS],
)
def test_refusals(src, dst, wl, strategy, message) -> None:
    with pytest.raises(CapabilityError) as err:
        choose(src, dst, wl, GBE, Request(strategy, 300))
    assert message in str(err.value)
    if message.startswith(("precopy", "postcopy", "hybrid", "a CRIU")):
        assert str(err.value) == message


@pytest.mark.parametrize(
    ("src", "dst", "link", "req"),
    [
        (SRC, DST, GBE, Request("warp", 300)),
        (SRC, node("pi-01"), GBE, AUTO),
        (SRC, DST, Link(0), AUTO),
        (SRC, DST, GBE, Request("auto", 0)),
    ],
)
def test_bad_requests(src, dst, link, req) -> None:
    with pytest.raises(BadRequest):
        choose(src, dst, BIG, link, req)


def test_cold_downtime_numbers() -> None:
    assert cold_downtime_ms(Workload(112 * MiB), Link(112 * MiB, 10)) == pytest.approx(1280)


def test_usable_lists_what_the_pair_can_run() -> None:
    assert usable(SRC, DST) == ["cold", "precopy", "delta", "postcopy", "hybrid"]
    assert usable(NO_SD, NO_LAZY_DST) == ["cold", "delta"]
    assert usable(SRC, node("x", arch="x86_64")) == []


def test_worked_example_in_docstring() -> None:
    assert doctest.testmod(tasks.core.chooser).failed == 0


# --- properties -------------------------------------------------------------


FAULTS = ("arch", "runtime", "src-criu", "dst-criu", "cordoned", "memory", "disk")

workloads = st.builds(
    Workload,
    memory_bytes=st.integers(0, 4 * GiB),
    dirty_rate_bps=st.none() | st.floats(0, 1e9),
)
links = st.builds(Link, bandwidth_bps=st.floats(1e5, 1e10), rtt_ms=st.floats(0, 50))
requests = st.builds(
    Request, strategy=st.sampled_from(STRATEGIES), downtime_limit_ms=st.floats(1, 60_000)
)


@st.composite
def pairs(draw: st.DrawFn, wl: Workload, faults: bool = True) -> tuple[NodeCaps, NodeCaps]:
    """A pair of nodes able to move ``wl``, then (maybe) broken in a few ways."""
    runtime = draw(st.sampled_from(["criu", "sim"]))
    room = wl.memory_bytes * 11 // 10 + 1

    def caps(name: str) -> NodeCaps:
        return NodeCaps(
            name=name,
            arch="aarch64",
            runtime=runtime,
            criu_ok=True,
            soft_dirty=draw(st.booleans()),
            lazy_pages=draw(st.booleans()),
            lazy_pages_reason=draw(st.sampled_from(["", "no uffd-noncoop"])),
            mem_free_bytes=draw(st.integers(room, 16 * GiB)),
            disk_free_bytes=draw(st.integers(room, 64 * GiB)),
            cordoned=draw(st.booleans()),  # a cordoned source may still be drained
        )

    src, dst = caps("pi-01"), replace(caps("pi-02"), cordoned=False)
    for fault in draw(st.lists(st.sampled_from(FAULTS), max_size=2)) if faults else []:
        if fault == "arch":
            dst = replace(dst, arch="x86_64")
        elif fault == "runtime":
            dst = replace(dst, runtime="sim" if runtime == "criu" else "criu")
        elif fault in ("src-criu", "dst-criu"):
            bad = replace(src if fault == "src-criu" else dst, criu_ok=False)
            src, dst = (bad, dst) if fault == "src-criu" else (src, bad)
        elif fault == "cordoned":
            dst = replace(dst, cordoned=True)
        elif fault == "memory":
            dst = replace(dst, mem_free_bytes=draw(st.integers(0, room - 1)))
        else:
            dst = replace(dst, disk_free_bytes=draw(st.integers(0, room - 1)))
    return src, dst


@settings(max_examples=200, deadline=None)
@given(workloads, links, requests, st.data())
def test_never_a_ruled_out_strategy_nor_across_arch(wl, link, req, data) -> None:
    src, dst = data.draw(pairs(wl))
    try:
        c = choose(src, dst, wl, link, req)
    except CapabilityError as err:
        assert src.name in str(err) or dst.name in str(err)  # names the node at fault
        return
    assert src.arch == dst.arch
    assert c.strategy in CONCRETE and req.strategy in ("auto", c.strategy)
    assert c.strategy in usable(src, dst)
    if c.strategy == "precopy" or c.iterative == "precopy":
        assert src.soft_dirty
    if c.strategy in ("postcopy", "hybrid"):
        assert src.lazy_pages and dst.lazy_pages
    assert dst.mem_free_bytes >= wl.memory_bytes and not dst.cordoned
    assert src.runtime == dst.runtime
    if src.runtime != "sim":
        assert src.criu_ok and dst.criu_ok


@settings(max_examples=200, deadline=None)
@given(workloads, links, requests, st.data())
def test_auto_always_answers_a_healthy_pair(wl, link, req, data) -> None:
    src, dst = data.draw(pairs(wl, faults=False))
    c = choose(src, dst, wl, link, replace(req, strategy="auto"))
    assert c.strategy in usable(src, dst)
    assert c.reason.startswith("auto: ")


@pytest.mark.parametrize(
    ("mode", "strategy", "runtime", "expected"),
    [
        ("auto", "cold", "criu", "auto"),
        ("on", "cold", "criu", "on"),
        ("off", "cold", "criu", "off"),
        ("auto", "delta", "criu", "off"),  # its block diff needs the pages on the source's disk
        ("auto", "precopy", "criu", "off"),  # its parent images are on the source
        ("auto", "postcopy", "criu", "off"),  # the source serves them itself
        ("auto", "cold", "sim", "off"),  # no CRIU to stream into
    ],
)
def test_page_server_mode(mode: str, strategy: str, runtime: str, expected: str) -> None:
    a, b = (node(n, runtime=runtime, page_server=runtime == "criu") for n in "ab")
    assert page_server(mode, strategy, a, b)[0] == expected


def test_page_server_on_where_it_cannot_is_refused() -> None:
    with pytest.raises(CapabilityError, match="delta needs the pages"):
        page_server("on", "delta", node("a"), node("b"))
    with pytest.raises(BadRequest, match="page_server must be"):
        page_server("maybe", "cold", node("a"), node("b"))
