"""Filesystem sync between nodes that are network namespaces, each with its own disk.

Each node's worker runs in its netns and in a private mount namespace where
its own directory is mounted on the common path: the synced dir crosses the
shaped veth links to the rsync daemon on the destination's testbed address.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import criu_works, need
from tests.e2e.netcluster import NetCluster, wait_subnet_free
from tests.e2e.test_cross_node import kill_quietly, tx_bytes
from tests.integration.helpers import wait_for

pytestmark = pytest.mark.criu

WRITER = (
    "import os, sys, time\n"
    "f = open(os.path.join(sys.argv[1], 'lines'), 'a')\n"
    "i = 0\n"
    "while True:\n"
    "    f.write(f'{i}\\n'); f.flush(); i += 1; time.sleep(0.02)\n"
)
DATA = 20_000_000


class Disks(NetCluster):
    """A NetCluster whose nodes have node-local storage on ``<base>/local``."""

    def env(self) -> dict[str, str]:
        return {**super().env(), "FERRY_SYNC_ROOTS": str(self.base / "local")}

    def disk(self, node: str) -> Path:
        return self.base / f"{node}-disk"


@pytest.fixture(scope="module")
def disks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Disks]:
    need(os.geteuid() == 0, "the testbed needs root for ip netns")
    need(bool(shutil.which("ip") and shutil.which("tc")), "iproute2 (ip, tc) is not installed")
    need(shutil.which("rsync") is not None, "rsync is not installed (apt-get install rsync)")
    ok, why = criu_works()
    need(ok, why)
    holder = wait_subnet_free(timeout=180)
    need(holder is None, f"another testbed holds subnet 10.77.0 (on {holder}) for 3 min")
    base: Path = tmp_path_factory.mktemp("fsync-e2e")
    cluster = Disks(base, nodes=2, rate="1gbit")
    (base / "local").mkdir()
    for n in cluster.nodes:
        (base / f"{n}-disk").mkdir()
    cluster.mounts = {n: {base / f"{n}-disk": base / "local"} for n in cluster.nodes}
    try:
        yield cluster.up()
    finally:
        cluster.down()


def test_a_synced_dir_crosses_the_link_to_the_destination_s_address(disks: Disks) -> None:
    c = disks
    job = c.base / "local" / "xwriter"
    (c.disk("node1") / "xwriter").mkdir()
    (c.disk("node1") / "xwriter" / "data").write_bytes(os.urandom(DATA))
    c.client.run(
        "node1", [sys.executable, "-u", "-c", WRITER, str(job)], name="xwriter", sync=[str(job)]
    )
    try:
        wait_for(lambda: (c.disk("node1") / "xwriter" / "lines").exists())
        sent_before = tx_bytes(c, "node2")
        m = c.client.migrate("xwriter", "node2", strategy="cold").wait(timeout=120)
        assert m.state.value == "done", m.errors
        target = m.results["prepare"]["sync"][0]
        assert target["address"].startswith(c.bed.address("node2") + ":")
        assert tx_bytes(c, "node2") - sent_before >= DATA  # over node2's link, not loopback
        lines = c.disk("node2") / "xwriter" / "lines"
        before = len(lines.read_text().split())
        wait_for(lambda: len(lines.read_text().split()) >= before + 20)
        values = [int(x) for x in lines.read_text().split()]
        assert values == list(range(len(values))) and len(values) > before
        assert (c.disk("node2") / "xwriter" / "data").stat().st_size == DATA
        assert not (c.disk("node1") / "xwriter").exists()
        from tasks.core.summary import downtime

        first, final = m.results["sync"], m.results["final_sync"]
        print(
            f"\nnode1 -> node2 over 1gbit with a {DATA / 1e6:.0f} MB synced dir: {downtime(m)}; "
            f"first pass {first['bytes']} B in {first['wall_ms']:.0f} ms, "
            f"final {final['bytes']} B in {final['wall_ms']:.0f} ms"
        )
    finally:
        kill_quietly(c, "xwriter")
