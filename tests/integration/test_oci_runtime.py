"""The ``oci`` runtime on real runc: containers with a rootfs, namespaces and a memory limit.

Two OciRuntime with their own state (and runc roots) sharing the container
root are two nodes. A counter that checks 16 MiB of its memory on every tick
moves cold and delta (full leave-running dumps, then the final one) and goes
on where it stopped, its memory limit read back from the destination's
cgroup. Bad input is refused before anything runs or freezes.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import criu_works, need
from tests.integration.helpers import assert_went_on, cgroup_memory_limit, ticks, wait_for
from tests.integration.ocirootfs import build_rootfs, counter_argv
from workers.errors import BadRequest, CapabilityError
from workers.runtimes.oci import OciRuntime

LIMIT = 256 << 20


@pytest.fixture(scope="module")
def rootfs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    ok, why = criu_works()
    need(ok, why)
    need(shutil.which("runc") is not None, "runc is not installed (ops/dev setup installs it)")
    return build_rootfs(tmp_path_factory.mktemp("rootfs"))


@pytest.fixture
def nodes(tmp_path: Path, rootfs: Path) -> Iterator[tuple[OciRuntime, OciRuntime]]:
    shared = tmp_path / "shared"
    src, dst = (OciRuntime(tmp_path / n, shared, cgroup_parent=f"/ferry/{n}") for n in ("n1", "n2"))
    yield src, dst
    for rt in (src, dst):
        for c in rt.containers():
            rt.kill(c.name)


def labels(rootfs: Path) -> dict[str, str]:
    return {"oci.rootfs": str(rootfs), "oci.memory": "256M"}


def started(rt: OciRuntime, rootfs: Path, name: str = "c1") -> str:
    info = rt.start(name, counter_argv(), labels(rootfs))
    assert info.state == "running" and info.runtime == "oci"
    wait_for(lambda: len(ticks(info.log)) >= 3, timeout=30)
    return info.log


def frozen_at(log: str) -> int:
    last = ticks(log)[-1]
    time.sleep(0.3)  # deliberate: time for a tick that must not come
    assert ticks(log)[-1] == last, "the counter ticked after its final dump"
    return last


def went_on(dst: OciRuntime, log: str, before: int) -> None:
    wait_for(lambda: ticks(log)[-1] > before + 3, timeout=30)
    assert_went_on(ticks(log), before)
    assert "corrupt" not in Path(log).read_text()
    assert dst.get("c1").state == "running"
    assert cgroup_memory_limit(dst.get("c1").pid) == LIMIT


def test_runs_in_its_own_namespaces_with_its_limit(nodes, rootfs) -> None:  # type: ignore[no-untyped-def]
    src, _ = nodes
    started(src, rootfs)
    pid = src.get("c1").pid
    for ns in ("mnt", "net", "pid", "ipc", "uts"):
        assert os.readlink(f"/proc/{pid}/ns/{ns}") != os.readlink(f"/proc/self/ns/{ns}"), ns
    assert os.readlink(f"/proc/{pid}/root") == "/"  # chrooted: the kernel shows its own root
    assert sorted(os.listdir(f"/proc/{pid}/root/usr/bin")) == ["python3", "python3.11"]
    assert cgroup_memory_limit(pid) == LIMIT
    src.kill("c1")
    assert src.containers() == []


def test_cold_move(nodes, rootfs, tmp_path) -> None:  # type: ignore[no-untyped-def]
    src, dst = nodes
    log = started(src, rootfs)
    images = tmp_path / "img"
    stats = src.checkpoint("c1", images)
    assert stats.pages_written > 0
    assert src.get("c1").state == "frozen"
    before = frozen_at(log)
    dst.restore("c1", images)
    went_on(dst, log, before)
    src.kill("c1")  # the source forgets its frozen copy; the destination's runs on
    assert dst.get("c1").state == "running"


def test_delta_move(nodes, rootfs, tmp_path) -> None:  # type: ignore[no-untyped-def]
    src, dst = nodes
    log = started(src, rootfs)
    if src.capabilities().soft_dirty:
        src.predump("c1", tmp_path / "pre", None)
    else:
        with pytest.raises(CapabilityError, match="soft-dirty"):
            src.predump("c1", tmp_path / "pre", None)
    first = src.checkpoint("c1", tmp_path / "d1", leave_running=True)
    assert src.get("c1").state == "running"
    n = len(ticks(log))
    wait_for(lambda: len(ticks(log)) > n + 3, timeout=30)  # it ran on between the passes
    src.checkpoint("c1", tmp_path / "d2", parent=tmp_path / "d1")
    before = frozen_at(log)
    dst.restore("c1", tmp_path / "d2")
    went_on(dst, log, before)
    assert first.pages_written > 0


def test_rollback_restores_the_source(nodes, rootfs, tmp_path) -> None:  # type: ignore[no-untyped-def]
    src, _ = nodes
    log = started(src, rootfs)
    src.checkpoint("c1", tmp_path / "img")
    before = frozen_at(log)
    assert src.resume("c1", tmp_path / "img").state == "running"
    wait_for(lambda: ticks(log)[-1] > before + 3, timeout=30)
    assert_went_on(ticks(log), before)


@pytest.mark.parametrize(
    ("change", "why"),
    [
        (lambda r, t: {"oci.rootfs": str(t / "nowhere")}, "not a directory"),
        (lambda r, t: {"oci.rootfs": "relative/dir"}, "absolute"),
        (lambda r, t: {"oci.rootfs": str(escaping(r, t))}, "escapes it"),
        (lambda r, t: {**labels(r), "oci.tty": "true"}, "tty"),
        (lambda r, t: {**labels(r), "oci.memory": "lots"}, "bad size"),
        (lambda r, t: {}, "needs a rootfs"),
    ],
)
def test_bad_input_refused(nodes, rootfs, tmp_path, change, why) -> None:  # type: ignore[no-untyped-def]
    src, _ = nodes
    with pytest.raises(BadRequest, match=why):
        src.start("c1", counter_argv(), change(rootfs, tmp_path))
    assert src.containers() == []
    assert not (tmp_path / "shared" / "c1").exists()


def escaping(rootfs: Path, tmp: Path) -> Path:
    """A copy of the rootfs with a symlink pointing out of it."""
    bad = tmp / "bad-rootfs"
    shutil.copytree(rootfs, bad, symlinks=True)
    (bad / "tmp" / "out").symlink_to("../../../../../../etc")
    return bad
