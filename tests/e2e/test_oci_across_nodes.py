"""OCI containers move between testbed nodes: a runc container and a Podman one, over the link.

Two nodes (FERRY_RUNTIME=oci), each a network namespace on the testbed's
bridge with its 1gbit link; each worker also runs in a private mount namespace
where its own Podman store is mounted on FERRY_PODMAN_STORE (as in
tests/integration/test_podman_migration.py), so ``podman ps`` "on node2" sees
node2's containers only. The container root (bundles, rootfs, logs) is the
testbed's shared storage.

A runc container (a rootfs built from this host, its own mount, pid and
network namespaces, a 256 MiB limit in its cgroup) moves node1 -> node2 cold
(its pages streamed into node2's CRIU during the dump where ``auto`` says so),
back with delta, then to node2 with post-copy (CRIU's lazy-pages daemon on
node2 pulls its pages from runc's page server on node1's testbed address):
the counter goes on where it stopped and the limit is read back from the
destination's cgroup after each move. A Podman container (an image imported
on node1 alone, ``--runtime runc``, the same limit) is adopted and moved cold
and back with delta: its ticks never repeat or go back, ``podman ps`` lists it
on the destination only, and post-copy of it is refused with the reason.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tasks.core.chooser import strategy_refusal
from tasks.core.summary import downtime, summary
from tests.conftest import criu_works, need
from tests.e2e.netcluster import NetCluster, wait_subnet_free
from tests.integration.helpers import (
    assert_went_on,
    cgroup_memory_limit,
    limit_of,
    ticks,
    wait_for,
)
from tests.integration.ocirootfs import COUNTER, build_rootfs, counter_argv
from tests.integration.podmanimage import (
    COMMON,
    TAG,
    NodePodman,
    import_image,
    node_stores,
    podman_run_args,
)
from workers.errors import CapabilityError, FerryError

pytestmark = pytest.mark.criu
NODES = ["node1", "node2"]
LIMIT = 256 << 20


@pytest.fixture(scope="module")
def bed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    need(os.geteuid() == 0, "the testbed needs root for ip netns")
    need(bool(shutil.which("ip") and shutil.which("tc")), "iproute2 (ip, tc) is not installed")
    ok, why = criu_works()
    need(ok, why)
    for tool in ("runc", "podman", "nsenter"):
        need(shutil.which(tool) is not None, f"{tool} is not installed (ops/dev setup installs it)")
    holder = wait_subnet_free(timeout=180)
    need(holder is None, f"another testbed holds subnet 10.77.0 (on {holder}) for 3 min")
    base: Path = tmp_path_factory.mktemp("ocibed")
    env = {"FERRY_RUNTIME": "oci", "FERRY_PODMAN_STORE": str(COMMON)}
    cluster = NetCluster(base, nodes=2, rate="1gbit", mounts=node_stores(base, NODES), extra=env)
    pods: dict[str, NodePodman] = {}
    try:
        cluster.up()
        pods = {n: NodePodman(store=COMMON, pid=cluster.workers[n].pid) for n in NODES}
        rootfs = build_rootfs(base / "shared" / "rootfs")
        image = import_image(pods["node1"], rootfs, base / "rootfs.tar")
        yield {"cluster": cluster, "pods": pods, "rootfs": rootfs, "image": image}
    finally:
        for p in pods.values():  # before the workers go: their mount namespaces hold the stores
            for name in p.call("ps", "--all", "--quiet").stdout.split():
                p.call("container", "rm", "--force", name)
        cluster.down()


def held(cluster: NetCluster, name: str) -> list[tuple[str, str]]:
    return [(c["node"], c["state"]) for c in cluster.client.containers() if c["name"] == name]


def tx_bytes(cluster: NetCluster, node: str) -> int:
    """Bytes the bridge has sent down ``node``'s link (the host end of its veth)."""
    return int(Path(f"/sys/class/net/{cluster.bed.prefix}-{node}/statistics/tx_bytes").read_text())


def test_a_runc_container_moves_cold_delta_and_postcopy_across_the_link(bed) -> None:  # type: ignore[no-untyped-def]
    cluster = bed["cluster"]
    client = cluster.client
    labels = {"oci.rootfs": str(bed["rootfs"]), "oci.memory": "256M"}
    info = client.run("node1", counter_argv(), name="rx", labels=labels)
    try:
        wait_for(lambda: len(ticks(info["log"])) > 10, timeout=30)
        assert limit_of(client, "rx") == LIMIT
        lazy = strategy_refusal("postcopy", *(client.node(n).caps for n in NODES))
        moves = [("node2", "cold"), ("node1", "delta"), ("node2", "postcopy")]
        for there, strategy in moves if lazy is None else moves[:2]:
            sent_before = tx_bytes(cluster, there)
            m = client.migrate("rx", there, strategy=strategy).wait(timeout=120)
            assert m.state.value == "done", m.errors
            before = max(ticks(info["log"]))
            wait_for(lambda b=before: max(ticks(info["log"])) >= b + 8, timeout=30)
            assert_went_on(ticks(info["log"]), before)
            assert "corrupt" not in Path(info["log"]).read_text()
            assert wait_for(lambda t=there: held(cluster, "rx") == [(t, "running")], timeout=30)
            assert limit_of(client, "rx") == LIMIT  # the destination's runc made its cgroup
            # its images (post-copy: its pages) crossed the testbed link to the destination
            assert m.results["prepare"]["address"].startswith(cluster.bed.address(there) + ":")
            sent = summary(m)["bytes"]  # post-copy: with the pages pulled after the restore
            assert sent > 0 and tx_bytes(cluster, there) - sent_before >= sent
            if strategy == "postcopy":
                moved = m.results["verify"]["lazy_bytes"]
                assert moved >= 16 << 20, m.results["verify"]
                assert m.results["dump"]["page_server"].startswith(cluster.bed.address("node1"))
            print(f"\nrunc {strategy} -> {there} over 1gbit: {downtime(m)}, {sent} bytes")
        if lazy is not None:
            pytest.skip(f"cold and delta moved it; post-copy cannot run here: {lazy}")
    finally:
        with contextlib.suppress(FerryError):
            client.kill("rx")


def listed(pod: NodePodman) -> list[tuple[str, str, str]]:
    ps = json.loads(pod.ok("ps", "--all", "--format", "json") or "[]")
    return [(",".join(p["Names"]), p["State"], p["ImageID"]) for p in ps]


def logged(pod: NodePodman, name: str, where: Path) -> list[int]:
    where.write_text(pod.ok("logs", name))
    return ticks(where)


def test_a_podman_container_moves_cold_and_delta_and_podman_agrees(bed, tmp_path) -> None:  # type: ignore[no-untyped-def]
    cluster, pods, image = bed["cluster"], bed["pods"], bed["image"]
    client = cluster.client
    pods["node1"].ok(
        "run", "--detach", "--name", "px", *podman_run_args(), "--memory", str(LIMIT),
        TAG, "/usr/bin/python3", "-S", "-u", "-c", COUNTER,
    )  # fmt: skip
    log = tmp_path / "px.log"
    try:
        wait_for(lambda: len(logged(pods["node1"], "px", log)) > 10, timeout=30)
        client.adopt("node1", "podman:px")
        assert not pods["node2"].has_image(image)  # the first move carries it
        here = "node1"
        for there, strategy in (("node2", "cold"), ("node1", "delta")):
            m = client.migrate("px", there, strategy=strategy).wait(timeout=180)
            assert m.state.value == "done", m.errors
            before = max(logged(pods[there], "px", log))
            wait_for(lambda t=there, b=before: max(logged(pods[t], "px", log)) >= b + 8, 30)
            values = logged(pods[there], "px", log)  # its log moved with it: every tick
            assert_went_on(values, before)
            assert values == list(range(values[-1] + 1)), "a tick was lost or repeated"
            assert "corrupt" not in log.read_text()
            assert listed(pods[there]) == [("px", "running", image)]
            assert listed(pods[here]) == []  # removed there, not just stopped
            assert held(cluster, "px") == [(there, "running")]
            pid = int(pods[there].inspect("px")["State"]["Pid"])  # type: ignore[index]
            assert cgroup_memory_limit(pid) == LIMIT
            assert m.results["prepare"]["address"].startswith(cluster.bed.address(there) + ":")
            print(f"\npodman {strategy} -> {there} over 1gbit: {downtime(m)}")
            here = there
        with pytest.raises(CapabilityError, match="Podman 4.3's checkpoint has no lazy pages"):
            client.migrate("px", "node2", strategy="postcopy").wait(timeout=60)
        assert listed(pods["node1"]) == [("px", "running", image)] and listed(pods["node2"]) == []
        client.release("px")
        assert held(cluster, "px") == []
        assert listed(pods["node1"]) == [("px", "running", image)]  # Podman's alone, running on
    finally:
        with contextlib.suppress(FerryError):
            client.release("px")
        for p in pods.values():
            p.call("container", "rm", "--force", "px")
