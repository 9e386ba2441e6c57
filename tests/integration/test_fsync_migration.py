"""Filesystem sync in real migrations: node-local dirs move with their container.

Two nodes on one machine, each in its own mount namespace with its own
"disk" bind-mounted on one common path (LocalCluster ``mounts``): the same
path holds different content on each node, as on two Raspberry Pis. A real
CRIU container keeps appending to a file it holds open in its declared dir.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tasks.api.localcluster import LocalCluster
from tests.conftest import cluster_env, criu_works, need, running
from tests.integration.helpers import COUNTER, ticks, wait_for
from workers.errors import BadRequest

pytestmark = pytest.mark.criu

NODES = ("d1", "d2")
# Appends a number to its file every 20 ms, the file open all along; exits as
# soon as its node holds a "poison" file (a destination that fails on restore).
WRITER = (
    "import os, sys, time\n"
    "d = sys.argv[1]\n"
    "f = open(os.path.join(d, 'lines'), 'a')\n"
    "i = 0\n"
    "while not os.path.exists(os.path.join(os.path.dirname(d), 'poison')):\n"
    "    f.write(f'{i}\\n'); f.flush(); i += 1; time.sleep(0.02)\n"
)


class Disks(LocalCluster):
    local: Path  # the common path: node-local storage

    def disk(self, node: str) -> Path:
        """What ``local`` holds on ``node``, seen from outside its namespace."""
        return self.base / f"{node}-disk"


@pytest.fixture(scope="module")
def disks(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[Disks]:
    ok, why = criu_works()
    need(ok, why)
    need(shutil.which("rsync") is not None, "rsync is not installed (apt-get install rsync)")
    need(os.geteuid() == 0, "private mount namespaces need root")
    base = tmp_path_factory.mktemp("fsync")
    local = base / "local"
    local.mkdir()
    for n in NODES:
        (base / f"{n}-disk").mkdir()
    env = {**cluster_env(redis_url), "FERRY_SYNC_ROOTS": str(local)}
    c = Disks(base, env, mounts={n: {base / f"{n}-disk": local} for n in NODES})
    c.local = local
    with running(c, list(NODES)) as up:
        yield up


def numbers(path: Path) -> list[int]:
    text = path.read_text() if path.exists() else ""
    return [int(x) for x in text.splitlines()[: None if text.endswith("\n") else -1]]


def start_writer(c: Disks, name: str, node: str = "d1") -> Path:
    job = c.local / name
    (c.disk(node) / name / "data").mkdir(parents=True)
    for i in range(20):  # data the container does not touch: sent once, in the first pass
        (c.disk(node) / name / "data" / f"blob-{i}").write_bytes(os.urandom(50_000))
    c.client.run(node, [sys.executable, "-u", "-c", WRITER, str(job)], name=name, sync=[str(job)])
    wait_for(lambda: len(numbers(c.disk(node) / name / "lines")) > 20)
    return job


def assert_went_on(values: list[int], before: int) -> None:
    """Every number once, in order, from 0: none lost, none repeated; and it went on."""
    assert values == list(range(len(values))), "a number was lost or written twice"
    assert values[-1] > before


def test_a_synced_dir_moves_with_its_container_cold_and_back_with_delta(disks: Disks) -> None:
    c = disks
    job = start_writer(c, "fs-writer")
    assert next(k for k in c.client.containers() if k["name"] == "fs-writer")["sync"] == [str(job)]
    m = c.client.migrate("fs-writer", "d2", "cold").wait(timeout=90)
    assert m.state.value == "done", m.errors
    before = numbers(c.disk("d2") / "fs-writer" / "lines")[-1]
    wait_for(lambda: numbers(c.disk("d2") / "fs-writer" / "lines")[-1] >= before + 20)
    assert_went_on(numbers(c.disk("d2") / "fs-writer" / "lines"), before)
    assert not (c.disk("d1") / "fs-writer").exists(), "the source's copy is still there"
    assert sorted(p.name for p in (c.disk("d2") / "fs-writer" / "data").iterdir()) == sorted(
        f"blob-{i}" for i in range(20)
    )
    assert m.results["sync"]["bytes"] > 1_000_000 > m.results["final_sync"]["bytes"]
    from tasks.core.summary import downtime, summary

    d = downtime(m)
    assert d is not None and d["fsync_ms"] > 0
    assert summary(m)["sync_bytes"] > 1_000_000
    # The declaration moved with it: back again, with delta.
    back = c.client.migrate("fs-writer", "d1", "delta").wait(timeout=90)
    assert back.state.value == "done", back.errors
    before = numbers(c.disk("d1") / "fs-writer" / "lines")[-1]
    wait_for(lambda: numbers(c.disk("d1") / "fs-writer" / "lines")[-1] >= before + 20)
    assert_went_on(numbers(c.disk("d1") / "fs-writer" / "lines"), before)
    assert not (c.disk("d2") / "fs-writer").exists()
    assert not list((c.base / "nodes" / "d2" / "fsync").glob("m-*")), "sync state left behind"
    c.client.kill("fs-writer")


def test_post_copy_syncs_the_dir_before_the_restore_too(disks: Disks) -> None:
    from tasks.core.chooser import strategy_refusal

    c = disks
    refusal = strategy_refusal("postcopy", *(c.client.node(n).caps for n in NODES))
    if refusal:
        pytest.skip(f"postcopy cannot run on this machine: {refusal}")
    start_writer(c, "fs-lazy")
    m = c.client.migrate("fs-lazy", "d2", "postcopy").wait(timeout=90)
    assert m.state.value == "done", m.errors
    assert "pages" in m.results and m.results["final_sync"]["dirs"] == 1
    before = numbers(c.disk("d2") / "fs-lazy" / "lines")[-1]
    wait_for(lambda: numbers(c.disk("d2") / "fs-lazy" / "lines")[-1] >= before + 20)
    assert_went_on(numbers(c.disk("d2") / "fs-lazy" / "lines"), before)
    assert not (c.disk("d1") / "fs-lazy").exists()
    c.client.kill("fs-lazy")


def test_a_destination_that_fails_leaves_the_source_dir_and_removes_its_copy(disks: Disks) -> None:
    c = disks
    start_writer(c, "fs-doomed")
    (c.disk("d2") / "poison").write_text("the restored copy exits at once")
    try:
        m = c.client.migrate("fs-doomed", "d2", "cold").wait(timeout=90)
    finally:
        (c.disk("d2") / "poison").unlink()
    assert m.state.value == "rolled_back", m.errors
    assert "final_sync" in m.results and "restore" in m.results  # it got that far
    assert any("verify" in e for e in m.errors), m.errors
    assert not (c.disk("d2") / "fs-doomed").exists(), "the destination's partial copy is left"
    before = numbers(c.disk("d1") / "fs-doomed" / "lines")[-1]
    wait_for(lambda: numbers(c.disk("d1") / "fs-doomed" / "lines")[-1] >= before + 20)
    assert_went_on(numbers(c.disk("d1") / "fs-doomed" / "lines"), before)
    assert len(list((c.disk("d1") / "fs-doomed" / "data").iterdir())) == 20
    c.client.kill("fs-doomed")


def test_a_cancel_during_the_first_pass_removes_the_partial_copy(disks: Disks) -> None:
    c = disks
    start_writer(c, "fs-slow")
    (c.disk("d1") / "fs-slow" / "big").write_bytes(os.urandom(3_000_000))
    h = c.client.migrate("fs-slow", "d2", "cold", bandwidth_bps=500_000)  # a first pass of ~6 s
    wait_for(lambda: (c.disk("d2") / "fs-slow").exists() and h.status().phase == "sync", timeout=30)
    time.sleep(1)  # deliberate: cancel well into the first pass, not as it starts
    c.client.cancel(h.id)
    m = h.wait(timeout=60)
    assert m.state.value == "rolled_back", m.errors
    wait_for(lambda: not (c.disk("d2") / "fs-slow").exists(), timeout=10)
    assert not list((c.base / "nodes" / "d2" / "fsync").glob(f"{m.id}*"))
    assert (c.disk("d1") / "fs-slow" / "big").stat().st_size == 3_000_000
    before = numbers(c.disk("d1") / "fs-slow" / "lines")[-1]
    wait_for(lambda: numbers(c.disk("d1") / "fs-slow" / "lines")[-1] >= before + 12)
    assert_went_on(numbers(c.disk("d1") / "fs-slow" / "lines"), before)
    c.client.kill("fs-slow")


def test_a_destination_dir_with_data_of_its_own_is_refused_and_kept(disks: Disks) -> None:
    c = disks
    start_writer(c, "fs-clash")
    (c.disk("d2") / "fs-clash").mkdir()
    (c.disk("d2") / "fs-clash" / "theirs").write_text("not from this migration")
    m = c.client.migrate("fs-clash", "d2", "cold").wait(timeout=60)
    assert m.state.value == "rolled_back"
    assert any("already exists" in e for e in m.errors), m.errors
    assert (c.disk("d2") / "fs-clash" / "theirs").read_text() == "not from this migration"
    assert [p.name for p in (c.disk("d2") / "fs-clash").iterdir()] == ["theirs"]
    before = numbers(c.disk("d1") / "fs-clash" / "lines")[-1]
    wait_for(lambda: numbers(c.disk("d1") / "fs-clash" / "lines")[-1] >= before + 12)
    assert_went_on(numbers(c.disk("d1") / "fs-clash" / "lines"), before)
    c.client.kill("fs-clash")
    shutil.rmtree(c.disk("d2") / "fs-clash")


@pytest.mark.parametrize(
    ("sync", "message"),
    [
        (lambda c: str(c.base / "elsewhere"), "outside what this node allows"),
        (lambda c: str(c.local / "link" / "d"), "is a symlink"),
        (lambda c: "relative/dir", "want an absolute path"),
        (lambda c: f"{c.local}/a/../a", "no '.', '..'"),
        (lambda c: str(c.local), "outside what this node allows"),  # a root itself
        (lambda c: str(c.local / "missing"), "does not exist"),
    ],
    ids=["outside", "symlink", "relative", "dotdot", "root", "missing"],
)
def test_bad_sync_dirs_are_refused_and_nothing_starts(disks: Disks, sync, message: str) -> None:
    c = disks
    (c.base / "elsewhere").mkdir(exist_ok=True)
    (c.disk("d1") / "a").mkdir(exist_ok=True)
    (c.disk("d1") / "real" / "d").mkdir(parents=True, exist_ok=True)
    if not (c.disk("d1") / "link").is_symlink():
        (c.disk("d1") / "link").symlink_to(c.local / "real")
    with pytest.raises(BadRequest, match=message):
        c.client.run(
            "d1",
            [sys.executable, "-c", "import time; time.sleep(60)"],
            name="fs-bad",
            sync=[sync(c)],
        )
    assert not any(k["name"] == "fs-bad" for k in c.client.containers())
    assert not (c.base / "shared" / "fs-bad").exists()


def test_the_cli_takes_sync_dirs_and_says_what_is_wrong(disks: Disks) -> None:
    c = disks
    (c.disk("d1") / "fs-clijob").mkdir()
    done = c.cli(
        "run",
        "--node",
        "d1",
        "--name",
        "fs-clijob",
        "--sync",
        str(c.local / "fs-clijob"),
        "--",
        "sleep",
        "60",
    )
    assert done.returncode == 0, done.stderr
    listed = json.loads(c.cli("ps", "--json").stdout)
    assert next(k for k in listed if k["name"] == "fs-clijob")["sync"] == [
        str(c.local / "fs-clijob")
    ]
    moved = c.cli("migrate", "fs-clijob", "--to", "d2", "--strategy", "cold", "--json")
    assert moved.returncode == 0, moved.stderr
    summary = json.loads(moved.stdout)
    assert summary["sync_bytes"] > 0 and "fsync_ms" in summary
    shown = c.cli("status", summary["id"])
    assert "final sync" in shown.stdout and "fsync (ms)" in shown.stdout, shown.stdout
    c.client.kill("fs-clijob")
    done = c.cli(
        "run", "--node", "d1", "--name", "fs-badcli", "--sync", "/etc", "--", "sleep", "60"
    )
    assert done.returncode == 2, done.stderr
    assert "error:" in done.stderr and "outside what this node allows" in done.stderr
    assert not any(k["name"] == "fs-badcli" for k in c.client.containers())


@pytest.fixture(scope="module")
def own_roots(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[Disks]:
    """Two nodes whose container roots are node-local too: nothing is shared."""
    ok, why = criu_works()
    need(ok, why)
    need(shutil.which("rsync") is not None, "rsync is not installed (apt-get install rsync)")
    need(os.geteuid() == 0, "private mount namespaces need root")
    base = tmp_path_factory.mktemp("fsync-own-roots")
    for common in ("local", "shared"):
        (base / common).mkdir()
    for n in ("w1", "w2"):
        (base / f"{n}-disk").mkdir()
        (base / f"{n}-shared").mkdir()
    c = Disks(
        base,
        cluster_env(redis_url),
        mounts={
            n: {base / f"{n}-disk": base / "local", base / f"{n}-shared": base / "shared"}
            for n in ("w1", "w2")
        },
    )
    c.local = base / "local"
    with running(c, ["w1", "w2"]) as up:
        yield up


def test_a_container_root_that_is_not_shared_moves_by_syncing_the_workdir(own_roots: Disks) -> None:
    c = own_roots
    workdir = c.base / "shared" / "fs-own"  # where the node starts it: its log is in there
    info = c.client.run(
        "w1", [sys.executable, "-u", "-c", COUNTER], name="fs-own", sync=[str(workdir)]
    )
    assert info["log"] == str(workdir / "log")
    log = c.base / "w1-shared" / "fs-own" / "log"
    wait_for(lambda: log.exists() and len(ticks(log)) > 10)
    m = c.client.migrate("fs-own", "w2", "cold").wait(timeout=90)
    assert m.state.value == "done", m.errors
    moved = c.base / "w2-shared" / "fs-own" / "log"
    before = max(ticks(moved))
    wait_for(lambda: max(ticks(moved)) >= before + 8)
    values = ticks(moved)
    assert values == list(range(len(values))) and values[-1] > before
    assert not (c.base / "w1-shared" / "fs-own").exists()
    c.client.kill("fs-own")
