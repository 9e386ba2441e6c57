"""Fixtures for tests across nodes: a ferry cluster whose nodes are network namespaces.

``netcluster``: a 3-node testbed (1gbit links, unique prefix), the broker a
password-protected Redis on its bridge, a real ``ferry worker --node nodeX``
inside each node's namespace (data plane on the node's testbed address), the
coordinator on the host. Torn down whatever happens; the containers die with
their namespaces.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import criu_works, need
from tests.e2e.netcluster import NetCluster, wait_subnet_free


@pytest.fixture(scope="module")
def netcluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NetCluster]:
    need(os.geteuid() == 0, "the testbed needs root for ip netns")
    need(bool(shutil.which("ip") and shutil.which("tc")), "iproute2 (ip, tc) is not installed")
    ok, why = criu_works()
    need(ok, why)
    # One testbed subnet per machine: wait for another run's testbed to go down.
    holder = wait_subnet_free(timeout=180)
    need(holder is None, f"another testbed holds subnet 10.77.0 (on {holder}) for 3 min")
    base: Path = tmp_path_factory.mktemp("netcluster")
    cluster = NetCluster(base, nodes=3, rate="1gbit")
    try:
        yield cluster.up()
    finally:
        cluster.down()
