"""OCI containers move between two real nodes: real runc, real workers, real Redis.

Nodes o1 and o2 run FERRY_RUNTIME=oci on one host; the container root (with
each container's bundle and log) is their shared storage. A counter that
checks 16 MiB of its memory every tick moves cold and delta and goes on where
it stopped, its 256 MiB limit read back from the destination's cgroup; so
does post-copy (runc's lazy dump, CRIU's lazy-pages daemon on o2), also when
o2's worker is killed just before or after the restore: one copy runs on.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tasks.api.localcluster import LocalCluster
from tasks.core.chooser import strategy_refusal
from tasks.core.summary import downtime
from tests.conftest import cluster_env, criu_works, need, running
from tests.integration.helpers import assert_went_on, limit_of, ticks, wait_for
from tests.integration.ocirootfs import build_rootfs, counter_argv
from tests.integration.test_container_verbs import cli

pytestmark = pytest.mark.criu
LIMIT = 256 << 20


@pytest.fixture(scope="module")
def oci_cluster(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[LocalCluster]:
    ok, why = criu_works()
    need(ok, why)
    need(shutil.which("runc") is not None, "runc is not installed (ops/dev setup installs it)")
    base = tmp_path_factory.mktemp("oci-cluster")
    env = {**cluster_env(redis_url), "FERRY_RUNTIME": "oci"}
    env["FERRY_FAILPOINTS"] = str(base / "failpoints")  # workers.failpoints: the kill test
    with running(LocalCluster(base, env), ["o1", "o2"]) as c:
        yield c


@pytest.fixture(scope="module")
def rootfs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_rootfs(tmp_path_factory.mktemp("rootfs"))


@pytest.mark.parametrize(
    ("strategy", "page_server"), [("cold", "off"), ("cold", "on"), ("delta", "auto")]
)
def test_counter_moves_and_keeps_its_limit(oci_cluster, rootfs, strategy, page_server) -> None:  # type: ignore[no-untyped-def]
    client = oci_cluster.client
    name = f"oci-{strategy}-{page_server}"
    argv = ["--rootfs", str(rootfs), "--memory", "256M", "--", *counter_argv()]
    started = cli(oci_cluster, "run", "--node", "o1", "--name", name, *argv)
    assert started.exit_code == 0, started.output
    info = next(c for c in client.containers() if c["name"] == name)
    try:
        assert "oci" in cli(oci_cluster, "ps").output  # the runtime column
        wait_for(lambda: len(ticks(info["log"])) > 10, timeout=30)
        m = client.migrate(name, "o2", strategy=strategy, page_server=page_server)
        m = m.wait(timeout=120)
        assert m.state.value == "done", m.errors
        if strategy == "delta":  # pre-copy passes ran while it ran (full leave-running dumps)
            assert m.results["precopy"]
        # on: its pages went into o2's page server during the dump (its 16 MiB, uncompressed)
        assert ("pages" in m.results["dump"]) is (page_server == "on")
        if page_server == "on":
            assert m.results["dump"]["pages"]["bytes"] >= 16 << 20
        before = max(ticks(info["log"]))
        wait_for(lambda: max(ticks(info["log"])) >= before + 8, timeout=30)
        assert_went_on(ticks(info["log"]), before)
        assert "corrupt" not in Path(info["log"]).read_text()
        where = wait_for(
            lambda: (
                [(c["node"], c["state"]) for c in client.containers() if c["name"] == name]
                == [("o2", "running")]
            ),
            timeout=30,
        )
        assert where
        assert limit_of(client, name) == LIMIT
    finally:
        client.kill(name)


def test_a_corrupt_pages_stream_fails_the_dump_and_the_paused_source_goes_on(
    oci_cluster, rootfs
) -> None:  # type: ignore[no-untyped-def]
    """Streamed, the pages leave no images on the source: it was paused, not ended, and resumes."""
    client = oci_cluster.client
    labels = {"oci.rootfs": str(rootfs), "oci.memory": "256M"}
    info = client.run("o1", counter_argv(), name="oci-corrupt", labels=labels)
    control = oci_cluster.base / "failpoints"
    try:
        wait_for(lambda: len(ticks(info["log"])) > 10, timeout=30)
        control.write_text("pages:corrupt\n")  # o1 flips a byte of every stream it sends
        try:
            m = client.migrate("oci-corrupt", "o2", strategy="cold", page_server="on")
            m = m.wait(timeout=120)
        finally:
            control.write_text("")
        assert m.state.value == "rolled_back", m.errors
        assert any("blake3" in e.lower() or "digest" in e.lower() for e in m.errors), m.errors
        before = max(ticks(info["log"]))
        wait_for(lambda: max(ticks(info["log"])) >= before + 8, timeout=30)
        assert_went_on(ticks(info["log"]), before)
        where = [(c["node"], c["state"]) for c in client.containers() if c["name"] == "oci-corrupt"]
        assert where == [("o1", "running")]
    finally:
        client.kill("oci-corrupt")


def test_bad_rootfs_is_refused_in_one_line(oci_cluster, tmp_path, sim_cluster) -> None:  # type: ignore[no-untyped-def]
    bad = tmp_path / "escapes"
    (bad / "tmp").mkdir(parents=True)
    (bad / "tmp" / "out").symlink_to("../../../../etc")
    on_o1 = {c["name"] for c in oci_cluster.client.containers() if c["node"] == "o1"}
    for rootfs, why in ((bad, "escapes it"), (tmp_path / "nowhere", "not a directory")):
        got = cli(oci_cluster, "run", "--node", "o1", "--rootfs", str(rootfs), "--", "/bin/true")
        assert got.exit_code == 2 and why in got.output, got.output
    on_sim = cli(sim_cluster, "run", "--node", "s1", "--rootfs", str(bad), "--", "count")
    assert on_sim.exit_code == 2 and "need an oci node" in on_sim.output, on_sim.output
    # none started (an earlier test's container may still be listed, exited)
    assert {c["name"] for c in oci_cluster.client.containers() if c["node"] == "o1"} <= on_o1


def started(cluster: LocalCluster, rootfs: Path, name: str) -> dict[str, Any]:
    """A counter with a 256 MiB limit running on o1, ticking; its container record."""
    client = cluster.client
    refusal = strategy_refusal("postcopy", *(client.node(n).caps for n in ("o1", "o2")))
    need(refusal is None, f"post-copy cannot run on this machine: {refusal}")
    labels = {"oci.rootfs": str(rootfs), "oci.memory": "256M"}
    info = client.run("o1", counter_argv(), name=name, labels=labels)
    wait_for(lambda: len(ticks(info["log"])) > 10, timeout=30)
    return info


def test_postcopy_moves_a_runc_counter_that_goes_on(oci_cluster, rootfs) -> None:  # type: ignore[no-untyped-def]
    client = oci_cluster.client
    info = started(oci_cluster, rootfs, "oci-lazy")
    try:
        m = client.migrate("oci-lazy", "o2", strategy="postcopy").wait(timeout=120)
        assert m.state.value == "done", m.errors
        assert m.strategy == "postcopy"
        before = max(ticks(info["log"]))
        wait_for(lambda: max(ticks(info["log"])) >= before + 8, timeout=30)
        assert_went_on(ticks(info["log"]), before)
        assert "corrupt" not in Path(info["log"]).read_text()
        # its 16 MiB crossed after the restore, pulled by the lazy-pages daemon
        assert m.results["verify"]["lazy_bytes"] >= 16 << 20
        d = downtime(m)
        assert d is not None and d["pauses"] >= 1 and d["downtime_ms"] > 0
        assert d["degraded_ms"] >= 0 and d["faults"] > 0
        print(
            f"oci postcopy: downtime {d['downtime_ms']:.0f} ms, degraded {d['degraded_ms']:.0f} "
            f"ms, {d['faults']} faults, {m.results['verify']['lazy_bytes'] >> 20} MiB lazy"
        )
        on = [(c["node"], c["state"]) for c in client.containers() if c["name"] == "oci-lazy"]
        assert on == [("o2", "running")]
        assert limit_of(client, "oci-lazy") == LIMIT
    finally:
        client.kill("oci-lazy")


@pytest.mark.parametrize("point", ["restore:kill-before", "restore:kill-after"])
def test_a_destination_killed_mid_postcopy_loses_no_container(oci_cluster, rootfs, point) -> None:  # type: ignore[no-untyped-def]
    client = oci_cluster.client
    name = f"oci-lazy-{point.split('-')[1]}"
    info = started(oci_cluster, rootfs, name)
    control = oci_cluster.base / "failpoints"
    control.write_text(point + "\n")  # o2's worker SIGKILLs itself before/after the restore
    try:
        m = client.migrate(name, "o2", strategy="postcopy").wait(timeout=240)
    finally:
        control.write_text("")
    try:
        assert m.state.value in ("done", "rolled_back"), m.errors
        print(f"oci postcopy, {point} -> {m.state.value}")
        holder = "o2" if m.state.value == "done" else "o1"

        def where() -> list[tuple[str, str]]:
            return [
                (c["node"], c["state"]) for c in client.containers() if c["name"] == m.container
            ]

        wait_for(lambda: where() == [(holder, "running")], timeout=30)
        before = max(ticks(info["log"]))
        wait_for(lambda: max(ticks(info["log"])) >= before + 8, timeout=30)
        assert_went_on(ticks(info["log"]), before)
        assert "corrupt" not in Path(info["log"]).read_text()
    finally:
        client.kill(name)
