"""SIMULATED: a Pi 5's 16 KiB pages through the real queue, coordinator and data
plane (the sim runtime, FERRY_SIM_PAGE_SIZE=16384): delta between two 16 KiB nodes
compares 16 KiB blocks, and a 4 KiB node is refused as a destination, by name."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tasks.api.localcluster import LocalCluster
from tests.conftest import cluster_env
from tests.integration.helpers import wait_for
from workers.errors import CapabilityError

NODES = {"pg4": "4096", "pg16a": "16384", "pg16b": "16384"}
MEMORY = 64 << 20


@pytest.fixture(scope="module")
def pages_cluster(
    tmp_path_factory: pytest.TempPathFactory, redis_url: str
) -> Iterator[LocalCluster]:
    c = LocalCluster(
        tmp_path_factory.mktemp("pages"), {**cluster_env(redis_url), "FERRY_RUNTIME": "sim"}
    )
    try:
        c.start_coordinator()
        for name, page in NODES.items():
            c.start_node(name, env={"FERRY_SIM_PAGE_SIZE": page})
        c.wait_ready(list(NODES))
        yield c
    finally:
        c.stop()


def test_delta_between_16k_nodes_compares_16k_blocks(pages_cluster: LocalCluster) -> None:
    client = pages_cluster.client
    probes = {n.name: n.probe for n in client.nodes() if n.name in NODES}
    assert {n: p["page_size"] for n, p in probes.items()} == {k: int(v) for k, v in NODES.items()}
    client.run("pg16a", ["counter"], name="big-pages", labels={"sim.memory": str(MEMORY)})
    wait_for(lambda: any(c["name"] == "big-pages" for c in client.containers()))
    m = client.migrate("big-pages", "pg16b", strategy="delta").wait(timeout=90)
    assert m.state.value == "done", m.errors
    assert len(m.passes) >= 2
    assert {p["pages_total"] for p in m.passes} == {MEMORY // 16384}  # blocks of the node's pages
    with pytest.raises(CapabilityError, match="page sizes: pg16b has 16 KiB pages, pg4 4 KiB"):
        client.migrate("big-pages", "pg4", strategy="cold")
    client.kill("big-pages")
