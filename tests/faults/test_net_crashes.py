"""Kill -9 of either worker while a container's network is locked: its connections live on.

Nodes f1 and f2 (tests.faults.cluster) plug containers into one bridge on the
host (FERRY_BRIDGE, on a private /24). An echo server runs in a container with
its own address; a client on the host holds ONE connection and sends a
numbered line every 10 ms. A worker SIGKILLs itself between the source's dump
(the connections in repair mode behind CRIU's network lock, the address off
the bridge) and the destination's restore: the source's at the dump and at
either side of the transfer, then the destination's before the restore; and
the same kills with the migration cancelled while the worker is down, so the
source's copy comes back from its images. Post-copy too: the source's worker
killed once its lazy dump serves (cancelled as well: the held tree's
connections come out of repair mode on the source) and as the page transfer
begins, the destination's once its copy runs and pulls its pages. Each
migration ends DONE or ROLLED_BACK; either way one copy runs, the connection
was never reset, every line was answered once and in order, and the address
is on the bridge from exactly one node.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tasks.core.netaddr import parse
from tests.conftest import criu_works, need, running
from tests.faults.cluster import NODES, WORKER_DIED, FaultCluster
from tests.faults.conftest import fault_env
from tests.faults.tally import TALLY
from tests.integration.helpers import wait_for
from tests.tcpecho import SERVER, EchoClient
from workers import failpoints
from workers.runtimes.netns import NetIdentity

pytestmark = pytest.mark.criu

# the source's worker (f1) at the dump and around the transfer, then the destination's (f2)
LOCKED = ["dump:kill-after", "transfer:kill-before", "transfer:kill-after", "restore:kill-before"]
# the same kills, the migration cancelled while the worker is down: the source's copy resumes
ROLLBACK = ["dump:kill-after", "restore:kill-before"]
# post-copy: the source's worker (f1) as its page server waits and serves, the destination's
# (f2) with its copy running on pages still in flight
LAZY = ["dump:kill-after", "pages:kill-before", "restore:kill-after"]
CASES = (
    [(p, False, "cold") for p in LOCKED]
    + [(p, True, "cold") for p in ROLLBACK]
    + [(p, False, "postcopy") for p in LAZY]
    + [("dump:kill-after", True, "postcopy")]
)


def _ip(*args: str) -> str:
    return subprocess.run(["ip", *args], check=True, capture_output=True, text=True).stdout


@pytest.fixture(scope="module")
def netfaults(
    tmp_path_factory: pytest.TempPathFactory, redis_url: str
) -> Iterator[tuple[FaultCluster, str]]:
    """A FaultCluster whose nodes share a fresh host bridge: (it, the bridge's first three octets)."""

    need(os.geteuid() == 0, "containers with their own network need root")
    ok, why = criu_works()
    need(ok, why)
    name, subnet = f"fnf{random.randrange(1 << 20):05x}", f"10.79.{random.randrange(1, 250)}"
    _ip("link", "add", name, "type", "bridge")
    try:
        _ip("addr", "add", f"{subnet}.1/24", "dev", name)
        _ip("link", "set", name, "up")
        base = tmp_path_factory.mktemp("netfaults")
        env = {**fault_env(redis_url, str(base / "failpoints")), "FERRY_BRIDGE": name}
        c = FaultCluster(base, env)
        c.disarm()
        with running(c, list(NODES)):
            yield c, subnet
    finally:
        for held in tmp_path_factory.getbasetemp().glob("netfaults*/nodes/*/netns/*"):
            subprocess.run(["umount", str(held)], capture_output=True, check=False)
        subprocess.run(["ip", "link", "del", name], capture_output=True, check=False)


def on_bridge(c: FaultCluster, name: str, net: str) -> list[str]:
    """The nodes whose veth for ``name`` is a port of the bridge (the address is there)."""
    bridge = c.env["FERRY_BRIDGE"]
    ports = {
        line.split(":")[1].strip().split("@")[0]
        for line in _ip("-o", "link", "show", "master", bridge).splitlines()
    }
    iface = parse(net)
    return [
        n for n in NODES if NetIdentity(c.base / "nodes" / n, name, iface, bridge).veth in ports
    ]


def _connect(address: str) -> EchoClient | None:
    try:
        return EchoClient(address)
    except OSError:
        return None


@pytest.mark.parametrize("point,cancel,strategy", CASES)
def test_a_worker_killed_while_the_network_is_locked_keeps_the_connection(
    netfaults: tuple[FaultCluster, str], point: str, cancel: bool, strategy: str
) -> None:
    c, subnet = netfaults
    name = f"nf-{strategy[0]}-{point.replace(':', '-')}{'-cancel' if cancel else ''}"
    net = f"{subnet}.50/24"
    c.client.run("f1", [sys.executable, "-c", SERVER], name=name, net=net)
    client = wait_for(lambda: _connect(f"{subnet}.50"), timeout=20).start()
    try:
        wait_for(lambda: client.answered() > 50)
        c.arm(point)
        try:
            handle = c.client.migrate(name, "f2", strategy=strategy)
            if cancel:  # while the worker is dead: the source restores when it is back
                wait_for(lambda: failpoints.mark(c.control, handle.id, point).exists(), timeout=60)
                c.client.cancel(handle.id)
            m = handle.wait(timeout=120)
        finally:
            c.disarm()
        TALLY["faults tried"] += 1
        assert (
            m.state.value == "rolled_back" if cancel else m.state.value in ("done", "rolled_back")
        ), (m.state, m.errors)
        TALLY[m.state.value.replace("_", " ")] += 1
        home = "f2" if m.state.value == "done" else "f1"
        wait_for(lambda: len(c.copies(name)) == 1, timeout=10)
        seen = client.answered()
        wait_for(lambda: client.answered() > seen + 50, timeout=30)
        assert on_bridge(c, name, net) == [home]
        here = [k for k in c.client.containers() if k["name"] == name and k["state"] != "exited"]
        assert [k["node"] for k in here] == [home]
        wait_for(lambda: WORKER_DIED(c.client.status(handle.id)) or cancel, timeout=10)
        wait_for(lambda: not c.leftovers(handle.id), timeout=10)
    finally:
        got = client.stop()
    print(
        f"{strategy:8} {point:22} {'cancelled' if cancel else '':9} -> {m.state.value}: "
        f"{len(got.answers)} answers, "
        f"longest stall {got.longest_s * 1000:.0f} ms"
    )
    assert not got.error, f"the connection broke: {got.error}"
    assert got.in_order, "an answer was lost, repeated or out of order"
    c.client.kill(name)
