"""The runtime contract (workers.runtimes.base.Runtime), one suite over every runtime.

``criu`` is real CRIU on real processes, ``oci`` real runc on an OCI bundle
(a rootfs built from this host's python3); ``sim`` is the model (SIMULATED).
Two runtimes of one kind with their own state dirs are two nodes sharing the
container root. Each test checks outcomes (states, the counter going on
where it stopped), and a capability this node lacks (pre-dump's soft-dirty
tracking, post-copy's lazy pages) is asserted to be refused clearly, changing
nothing.
"""

from __future__ import annotations

import shutil
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import criu_works, need
from tests.integration.helpers import COUNTER, assert_went_on, ticks, wait_for
from tests.integration.test_lazylink import listeners
from workers.criu.adapter import Criu
from workers.errors import BadRequest, PermanentError, UnknownContainer
from workers.runtimes.base import Runtime

MIB = 1 << 20


@dataclass
class Pair:
    kind: str
    src: Runtime
    dst: Runtime
    argv: list[str]
    labels: dict[str, str]
    soft_dirty: bool  # can pre-dump
    lazy: tuple[bool, str]  # can post-copy, and why not


@pytest.fixture(scope="module")
def criu_caps(tmp_path_factory: pytest.TempPathFactory) -> tuple[bool, tuple[bool, str]]:
    """This node's pre-dump and post-copy capabilities, probed once as a node does."""
    ok, why = criu_works()
    need(ok, why)
    from workers.criu.probe import probe, probe_lazy

    home = tmp_path_factory.mktemp("probe")
    facts = probe(home, Criu())
    return facts.soft_dirty, probe_lazy(Criu(), home / "lazy", facts, True)


@pytest.fixture(params=["criu", "oci", "sim"])
def pair(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Pair]:
    shared = tmp_path / "shared"
    if request.param == "criu":
        from workers.runtimes.criu import CriuRuntime

        soft, lazy = request.getfixturevalue("criu_caps")
        p = Pair(
            "criu",
            CriuRuntime(tmp_path / "n1", shared),
            CriuRuntime(tmp_path / "n2", shared),
            [sys.executable, "-u", "-c", COUNTER],
            {},
            soft,
            lazy,
        )
    elif request.param == "oci":
        from tests.integration.ocirootfs import build_rootfs, counter_argv
        from workers.runtimes.oci import OciRuntime

        need(shutil.which("runc") is not None, "runc is not installed (ops/dev setup installs it)")
        soft, lazy = request.getfixturevalue("criu_caps")  # the same probe (ocilazy)
        rootfs = build_rootfs(tmp_path / "rootfs")
        p = Pair(
            "oci",
            OciRuntime(tmp_path / "n1", shared),
            OciRuntime(tmp_path / "n2", shared),
            counter_argv(),
            {"oci.rootfs": str(rootfs), "oci.memory": "128M"},
            soft,
            lazy,
        )
    else:
        from workers.runtimes.sim import SimRuntime

        p = Pair(
            "sim",
            SimRuntime(tmp_path / "n1", shared),
            SimRuntime(tmp_path / "n2", shared),
            ["counter"],
            {"sim.memory": str(8 * MIB)},
            True,
            (True, ""),
        )
    yield p
    for rt in (p.src, p.dst):
        for c in rt.containers():
            rt.kill(c.name)


def started(p: Pair, name: str = "c1") -> str:
    """Start ``name`` on the source; return its log once it has ticked."""
    info = p.src.start(name, p.argv, p.labels)
    assert info.state == "running" and info.name == name
    wait_for(lambda: len(seen(p.src, name)) >= 3)
    return info.log


def seen(rt: Runtime, name: str) -> list[int]:
    """The counter's ticks so far (asking the runtime first: the sim writes its log when asked)."""
    return ticks(rt.get(name).log)


def settled(rt: Runtime, log: str) -> int:
    """The last tick of a frozen counter (it prints no more)."""
    last = seen(rt, "c1")[-1]
    time.sleep(0.3)  # deliberate: time for a tick that must not come
    assert seen(rt, "c1")[-1] == last, "the counter ticked while frozen"
    return last


def test_start_list_get_kill(pair: Pair) -> None:
    started(pair)
    assert [c.name for c in pair.src.containers()] == ["c1"]
    assert pair.src.get("c1").runtime == pair.kind
    values = seen(pair.src, "c1")  # read once: it ticks on between two reads
    assert values == sorted(values)
    pair.src.kill("c1")
    assert pair.src.containers() == []
    with pytest.raises(UnknownContainer):
        pair.src.get("c1")


def test_bad_input_gets_a_clear_error_and_changes_nothing(pair: Pair, tmp_path: Path) -> None:
    started(pair)
    with pytest.raises(BadRequest, match="bad container name"):
        pair.src.start("../escape", pair.argv, pair.labels)
    with pytest.raises(BadRequest, match="already runs"):
        pair.src.start("c1", pair.argv, pair.labels)
    with pytest.raises(UnknownContainer):
        pair.src.kill("nobody")
    with pytest.raises(BadRequest, match="bad container name"):
        pair.src.checkpoint("../c1", tmp_path / "x")
    assert [(c.name, c.state) for c in pair.src.containers()] == [("c1", "running")]


def test_checkpoint_then_restore_on_another_node_goes_on(pair: Pair, tmp_path: Path) -> None:
    log = started(pair)
    stats = pair.src.checkpoint("c1", tmp_path / "img")
    assert stats.pages_written > 0 and stats.frozen_ms > 0
    assert pair.src.get("c1").state == "frozen"
    before = settled(pair.src, log)
    with pytest.raises(PermanentError, match="not 'c2'"):
        pair.dst.restore("c2", tmp_path / "img")  # images of another container
    landed = tmp_path / "landed"
    shutil.copytree(tmp_path / "img", landed)  # what the data plane does
    pair.dst.restore("c1", landed)
    assert pair.dst.get("c1").state == "running"
    with pytest.raises(BadRequest, match="already runs"):
        pair.dst.restore("c1", landed)
    pair.src.kill("c1")  # cleanup after the point of no return
    wait_for(lambda: seen(pair.dst, "c1")[-1] > before + 3)
    assert_went_on([v for v in ticks(log) if v > before - 3], before)
    assert ticks(log)[ticks(log).index(before) + 1] == before + 1, "the counter restarted"


def test_checkpoint_leave_running_and_resume(pair: Pair, tmp_path: Path) -> None:
    log = started(pair)
    pair.src.checkpoint("c1", tmp_path / "snap", leave_running=True)
    assert pair.src.get("c1").state == "running"
    n = seen(pair.src, "c1")[-1]
    wait_for(lambda: seen(pair.src, "c1")[-1] > n + 2)
    pair.src.checkpoint("c1", tmp_path / "final")
    before = settled(pair.src, log)
    assert pair.src.resume("c1", tmp_path / "final").state == "running"
    wait_for(lambda: seen(pair.src, "c1")[-1] > before + 2)
    assert_went_on(ticks(log), before)


def test_predump_passes_or_a_clear_refusal(pair: Pair, tmp_path: Path) -> None:
    started(pair)
    if not pair.soft_dirty:  # this kernel: CRIU refuses, and the container runs on untouched
        with pytest.raises(PermanentError, match="[Tt]racking memory is not available"):
            pair.src.predump("c1", tmp_path / "p1", None)
        n = seen(pair.src, "c1")[-1]
        wait_for(lambda: seen(pair.src, "c1")[-1] > n + 2)
        assert pair.src.get("c1").state == "running"
        return
    first = pair.src.predump("c1", tmp_path / "p1", None)
    n = seen(pair.src, "c1")[-1]
    wait_for(lambda: seen(pair.src, "c1")[-1] >= n + 3)  # it dirties pages between the passes
    second = pair.src.predump("c1", tmp_path / "p2", tmp_path / "p1")
    assert pair.src.get("c1").state == "running"
    assert 0 < second.pages_written < first.pages_written <= first.pages_scanned


def test_postcopy_round_trip_or_a_clear_refusal(pair: Pair, tmp_path: Path) -> None:
    can, why = pair.lazy
    need(can, f"post-copy does not work on this node: {why}")
    log = started(pair)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    pair.src.checkpoint_lazy("c1", tmp_path / "lazy", "127.0.0.1", port)
    assert pair.src.get("c1").state == "frozen"
    if pair.kind != "sim":  # the page server hands out memory: never on the cluster network
        assert listeners(port) == [f"127.0.0.1:{port}"]
    before = settled(pair.src, log)
    landed = tmp_path / "landed"
    shutil.copytree(tmp_path / "lazy", landed, ignore=shutil.ignore_patterns("*.log"))
    pair.dst.restore(
        "c1", landed, page_server=lambda: socket.create_connection(("127.0.0.1", port))
    )
    pair.src.wait_lazy("c1", tmp_path / "lazy", 30)  # every page served
    pair.src.kill("c1")
    wait_for(lambda: seen(pair.dst, "c1")[-1] > before + 3)
    assert_went_on([v for v in ticks(log) if v >= before - 3], before)
