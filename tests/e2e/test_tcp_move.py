"""A service keeps its address and its TCP connection across moves between testbed nodes.

Every node's eth0 is a port of a bridge ``br0`` inside the node (FERRY_BRIDGE);
an echo server runs in a container with its own address 10.77.0.50/24 on it;
the client on the host (another namespace on the testbed's bridge) holds ONE
connection and sends a numbered line every 10 ms. The container moves
node1 -> node2 cold, node2 -> node1 with delta, back with precopy (the
uffd-wp tracker's passes run while it serves), then once more with postcopy
(it runs on node1 at once, its pages pulled from node2 as it touches them):
the connection stays open, every line is answered once and in order, and the
client's longest stall is printed beside the pause ferry reported (``pytest -s``).
A move cancelled mid-transfer, cold or post-copy, leaves the connection served
by the source.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tasks.core.pauses import longest
from tests.conftest import criu_works, need
from tests.e2e.netcluster import NetCluster, wait_subnet_free
from tests.integration.helpers import wait_for
from tests.tcpecho import SERVER, EchoClient
from workers.errors import FerryError

pytestmark = pytest.mark.criu
ADDRESS = "10.77.0.50"


@pytest.fixture(scope="module")
def bridged(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NetCluster]:
    need(os.geteuid() == 0, "the testbed needs root for ip netns")
    need(bool(shutil.which("ip") and shutil.which("tc")), "iproute2 (ip, tc) is not installed")
    ok, why = criu_works()
    need(ok, why)
    holder = wait_subnet_free(timeout=180)
    need(holder is None, f"another testbed holds subnet 10.77.0 (on {holder}) for 3 min")
    base: Path = tmp_path_factory.mktemp("tcpmove")
    cluster = NetCluster(base, nodes=2, rate="1gbit", bridge="br0")
    try:
        yield cluster.up()
    finally:
        cluster.down()


def _connect() -> EchoClient | None:
    try:
        return EchoClient(ADDRESS)
    except OSError:
        return None


def test_the_connection_survives_cold_delta_precopy_and_postcopy_moves(
    bridged: NetCluster,
) -> None:
    ferry = bridged.client
    ferry.run("node1", [sys.executable, "-c", SERVER], name="echo", net=f"{ADDRESS}/24")
    client = wait_for(_connect, timeout=20).start()
    reported = []
    try:
        wait_for(lambda: client.answered() > 50)
        moves = [("node2", "cold"), ("node1", "delta"), ("node2", "precopy"), ("node1", "postcopy")]
        for to, strategy in moves:
            m = ferry.migrate("echo", to, strategy=strategy).wait(timeout=120)
            assert m.state.value == "done", m.errors
            assert m.strategy.value == strategy and not m.fallbacks, m.path  # as asked
            pause = longest(m.pauses)
            tracker = m.results.get("precopy", {}).get("tracker")
            reported.append(
                (f"{strategy} ({tracker})" if tracker else strategy, pause.ms if pause else 0.0)
            )
            seen = client.answered()
            wait_for(lambda s=seen: client.answered() > s + 50, timeout=30)  # type: ignore[misc]
            here = [c for c in ferry.containers() if c["name"] == "echo" and c["state"] != "exited"]
            assert [(c["node"], c["net"]) for c in here] == [(to, f"{ADDRESS}/24")]
    finally:
        got = client.stop()
        with contextlib.suppress(FerryError):
            ferry.kill("echo")
    assert not got.error, f"the connection broke: {got.error}"
    assert got.in_order, "an answer was lost, repeated or out of order"
    worst = sorted((s for _, s in got.stalls), reverse=True)[:2]
    stalls = ", ".join(f"{s * 1000:.0f} ms" for s in worst)
    print(
        f"\n{len(got.answers)} answers over one connection; ferry's longest pauses: "
        + ", ".join(f"{s} {ms:.0f} ms" for s, ms in reported)
        + f"; the client's longest stalls: {stalls or 'none over 50 ms'}"
    )


def test_addresses_that_collide_are_refused_before_anything_runs(bridged: NetCluster) -> None:
    ferry = bridged.client
    ferry.run("node1", ["sleep", "600"], name="holder", net="10.77.0.60/24")
    try:
        for net, why in [
            ("10.77.0.60/24", "already holder's address"),
            ("10.77.0.12/24", "node2's own address"),
            ("192.168.5.5/24", "outside the cluster networks"),
        ]:
            with pytest.raises(FerryError, match=why):
                ferry.run("node2", ["sleep", "600"], name="claimer", net=net)
        assert not [c for c in ferry.containers() if c["name"] == "claimer"]
    finally:
        ferry.kill("holder")


@pytest.mark.parametrize(
    "strategy,bandwidth",
    [
        ("cold", 8e6),  # 128 MiB at 8 MB/s: the images take ~16 s to cross, the tree frozen
        # all but the pages at 30 kB/s: seconds, the lazy dump's page server waiting
        ("postcopy", 30e3),
    ],
)
def test_a_rollback_mid_transfer_leaves_the_connection_served_by_the_source(
    bridged: NetCluster, strategy: str, bandwidth: float
) -> None:
    ferry = bridged.client
    ferry.run("node1", [sys.executable, "-c", SERVER, "128"], name="echo-rb", net=f"{ADDRESS}/24")
    client = wait_for(_connect, timeout=30).start()
    try:
        wait_for(lambda: client.answered() > 50, timeout=30)
        handle = ferry.migrate("echo-rb", "node2", strategy=strategy, bandwidth_bps=bandwidth)
        wait_for(lambda: str(handle.status().phase) == "Phase.TRANSFER", timeout=60, every=0.01)
        ferry.cancel(handle.id)
        m = handle.wait(timeout=120)
        assert m.state.value == "rolled_back", m.errors
        seen = client.answered()
        wait_for(lambda: client.answered() > seen + 50, timeout=30)
        here = [c for c in ferry.containers() if c["name"] == "echo-rb" and c["state"] != "exited"]
        assert [c["node"] for c in here] == ["node1"]
    finally:
        got = client.stop()
        with contextlib.suppress(FerryError):
            ferry.kill("echo-rb")
    assert not got.error, f"the connection broke: {got.error}"
    assert got.in_order, "an answer was lost, repeated or out of order"
