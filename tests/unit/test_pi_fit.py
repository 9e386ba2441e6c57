"""The reference cluster's kernels, as their probes publish them: Raspberry Pi OS on a
Pi 4, a Pi 5 on its default 16 KiB kernel, Ubuntu's linux-raspi, and this VM. Each
yields the strategies it can run, and every refusal names the node and the piece."""

from __future__ import annotations

import doctest
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tasks.core.requirements
from tasks.core.chooser import Link, Request, Workload, choose, runs, usable
from tasks.core.evacplan import compatible, node_of
from tasks.core.nodes import NodeRecord
from tasks.core.requirements import diagnose, peers
from tests.unit.records import node_record
from workers.dataplane.delta import MANIFEST, apply_delta, make_delta
from workers.errors import CapabilityError
from workers.runtimes.sim import SimRuntime

GiB, MiB = 1 << 30, 1 << 20
PI_OS = ["userfaultfd", "uffd_wp", "soft_dirty", "unix_diag", "packet_diag", "netlink_diag"]
NO_UFFD = "the kernel has no userfaultfd"


def probe(arch: str, page: int, lacks: list[str], lazy: bool, bits: int = 64) -> dict[str, Any]:
    return {
        "arch": arch,
        "bits": bits,
        "page_size": page,
        "criu_ok": True,
        "criu_version": "4.1.1",
        "soft_dirty": "soft_dirty" not in lacks,
        "lazy_pages": lazy,
        "lazy_pages_reason": "" if lazy else NO_UFFD,
        "page_server": True,
        "lacks": lacks,
        "mem_total_bytes": 4 * GiB,
        "mem_free_bytes": 3 * GiB,
        "disk_free_bytes": 32 * GiB,
    }


KINDS: dict[str, dict[str, Any]] = {
    "pios": probe("aarch64", 4096, PI_OS, False),  # bcm2711_defconfig (Pi 4)
    "pi5": probe("aarch64", 16384, PI_OS, False),  # bcm2712_defconfig, kernel_2712.img
    "raspi": probe("aarch64", 4096, ["soft_dirty"], True),  # Ubuntu linux-raspi
    "vm": probe("x86_64", 4096, ["soft_dirty"], True),  # this VM, as probed
    "pi32": probe("aarch64", 4096, PI_OS, False, bits=32),  # 32-bit Pi OS on a 64-bit kernel
}


def rec(kind: str, name: str | None = None) -> NodeRecord:
    return node_record(
        {"name": name or kind, "runtime": "criu", "probe": KINDS[kind], "alive": True}
    )


@pytest.mark.parametrize(
    ("kind", "strategies", "missing"),
    [
        ("pios", ["cold", "delta"], PI_OS),
        ("pi5", ["cold", "delta"], PI_OS),
        ("raspi", ["cold", "delta", "postcopy"], ["soft_dirty"]),
        ("vm", ["cold", "delta", "postcopy"], ["soft_dirty"]),
    ],
)
def test_strategies_and_missing_pieces(
    kind: str, strategies: list[str], missing: list[str]
) -> None:
    assert [s.value for s in runs(rec(kind).caps)] == strategies
    d = diagnose(rec(kind))
    assert [s.value for s in d.strategies] == strategies
    assert sorted(m.need.value for m in d.missing) == sorted(missing)
    for m in d.missing:
        assert m.fix and m.costs
    if kind == "pios":
        uffd = next(m for m in d.missing if m.need.value == "userfaultfd")
        assert uffd.lost == ("postcopy", "hybrid")
        assert "ops/kernel/ferry.config" in uffd.fix and "linux-raspi" in uffd.fix
    if kind == "pi5":
        assert any("kernel8.img" in n for n in d.notes)


@pytest.mark.parametrize(
    ("src", "dst", "usable_", "refusal"),
    [
        ("pios", "pios", ["cold", "delta"], None),
        ("raspi", "raspi", ["cold", "delta", "postcopy"], None),
        ("pios", "raspi", ["cold", "delta"], None),
        ("pios", "pi5", [], "page sizes: pios has 4 KiB pages, pi5 16 KiB"),
        ("pi5", "raspi", [], "page sizes: pi5 has 16 KiB pages, raspi 4 KiB"),
        ("pi5", "pi5", ["cold", "delta"], None),
        ("vm", "raspi", [], "architectures: vm is x86_64, raspi is aarch64"),
        ("pi32", "pios", [], "userlands: pi32 runs a 32-bit one, pios a 64-bit one"),
    ],
)
def test_pairs(src: str, dst: str, usable_: list[str], refusal: str | None) -> None:
    a, b = rec(src).caps, rec(dst, dst + "-2" if dst == src else dst).caps
    assert [s.value for s in usable(a, b)] == usable_
    if refusal:
        with pytest.raises(CapabilityError, match=refusal):
            choose(a, b, Workload(64 * MiB), Link(112 * MiB), Request("cold"))


@pytest.mark.parametrize(
    ("src", "dst", "strategy", "names"),
    [
        ("pios", "raspi", "postcopy", ["pios", "CONFIG_USERFAULTFD", "use delta"]),
        ("raspi", "pios", "hybrid", ["soft-dirty", "raspi"]),
        ("raspi", "pi5", "postcopy", ["page sizes", "pi5"]),
        ("pios", "pios-2", "precopy", ["soft-dirty", "pios", "use delta"]),
    ],
)
def test_refusals_name_the_node_and_the_piece(
    src: str, dst: str, strategy: str, names: list[str]
) -> None:
    a, b = rec(src).caps, rec(dst.removesuffix("-2"), dst).caps
    with pytest.raises(CapabilityError) as err:
        choose(a, b, Workload(256 * MiB), Link(112 * MiB), Request(strategy))
    for name in names:
        assert name in str(err.value)


@settings(max_examples=200, deadline=None)
@given(
    kinds=st.sampled_from([("pios", "pios"), ("pios", "raspi"), ("pi5", "pi5"), ("raspi", "pios")]),
    mem=st.integers(0, 2 * GiB),
    dirty=st.none() | st.floats(0, 500 * MiB),
    bw=st.floats(1 * MiB, 200 * MiB),
    limit=st.floats(10, 5000),
)
def test_auto_never_picks_what_a_pi_os_node_cannot_run(
    kinds: tuple[str, str], mem: int, dirty: float | None, bw: float, limit: float
) -> None:
    a, b = rec(kinds[0], "a").caps, rec(kinds[1], "b").caps
    c = choose(a, b, Workload(mem, dirty), Link(bw), Request("auto", limit))
    assert c.strategy in usable(a, b)


def test_evacuation_skips_the_other_page_size_and_says_why() -> None:
    records = {n: rec(k, n) for n, k in [("pi-1", "pios"), ("pi-5", "pi5"), ("pi-u", "raspi")]}
    why = compatible(records, None, "auto")
    drain = node_of(records["pi-1"])
    assert why(drain, node_of(records["pi-u"])) is None
    assert "page sizes" in (why(drain, node_of(records["pi-5"])) or "")
    lazy = compatible(records, None, "postcopy")
    assert "pi-1" in (lazy(drain, node_of(records["pi-u"])) or "")  # the source lacks uffd
    assert peers(records) == {
        "aarch64 64-bit 16 KiB pages": ["pi-5"],
        "aarch64 64-bit 4 KiB pages": ["pi-1", "pi-u"],
    }


def test_doctests() -> None:
    assert doctest.testmod(tasks.core.requirements).failed == 0


def test_delta_blocks_are_the_sim_nodes_16k_pages(tmp_path: Path) -> None:
    """A sim node with a Pi 5's pages: its delta compares and rebuilds in 16 KiB blocks."""
    rt = SimRuntime(tmp_path / "n1", tmp_path / "shared", page_size=16384)
    block = rt.capabilities().page_size
    assert block == 16384
    rt.start("c1", ["counter"], {"sim.memory": str(4 * MiB), "sim.dirty_rate": str(4 * MiB)})
    rt.checkpoint("c1", tmp_path / "d1", leave_running=True)
    time.sleep(0.2)  # let the model dirty some pages between the two snapshots
    rt.checkpoint("c1", tmp_path / "d2", leave_running=True)
    stats = make_delta(tmp_path / "d1", tmp_path / "d2", tmp_path / "out", block)
    assert stats.blocks_total == 4 * MiB // 16384
    assert 0 < stats.blocks_changed < stats.blocks_total
    assert '"block": 16384' in (tmp_path / "out" / MANIFEST).read_text()
    apply_delta(tmp_path / "d1", tmp_path / "out", tmp_path / "rebuilt")
    for f in (tmp_path / "d2").iterdir():
        assert (tmp_path / "rebuilt" / f.name).read_bytes() == f.read_bytes()
    rt.kill("c1")
