"""The local testbed, for real: namespaces, a bridge, tc shaping and a Redis on the bridge."""

from __future__ import annotations

import json
import os
import random
import socket
import string
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.testbed import shaping
from tests.testbed.cluster import Testbed, status, teardown
from tests.testbed.shaping import Shape, ShapingWarning
from workers.errors import BadRequest, PermanentError, UnknownNode

# In CI a non-root run fails (with the same message) instead of skipping.
pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 and not os.environ.get("CI"), reason="the testbed needs root for ip netns"
)
REPO = Path(__file__).resolve().parents[2]

LISTEN = """
import socket, sys
server = socket.create_server(("0.0.0.0", int(sys.argv[1])))
print("ready", flush=True)
while True:
    server.accept()[0].close()
"""
CONNECT = """
import socket, sys
socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3])).close()
"""
RECEIVE = """
import socket, sys, time
server = socket.create_server(("0.0.0.0", int(sys.argv[1])))
print("ready", flush=True)
conn, _ = server.accept()
buf, total, start = bytearray(1 << 20), 0, None
while n := conn.recv_into(buf):
    start, total = start or time.monotonic(), total + n
print(total * 8 / (time.monotonic() - start) / 1e6)
"""
SEND = """
import socket, sys, time
conn = socket.create_connection((sys.argv[1], int(sys.argv[2])))
chunk, end = bytes(1 << 18), time.monotonic() + float(sys.argv[3])
while time.monotonic() < end:
    conn.sendall(chunk)
conn.close()
"""
UDP_COUNT = """
import socket, sys
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind(("0.0.0.0", int(sys.argv[1])))
sock.settimeout(1.0)
print("ready", flush=True)
count = 0
try:
    while True:
        sock.recv(64)
        count += 1
except TimeoutError:
    print(count)
"""
UDP_SEND = """
import socket, sys, time
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for _ in range(int(sys.argv[3])):
    sock.sendto(b"x", (sys.argv[1], int(sys.argv[2])))
    time.sleep(0.0002)
"""
REDIS_PING = """
import redis, sys
try:
    print(redis.Redis.from_url(sys.argv[1], socket_timeout=3).ping())
except redis.exceptions.AuthenticationError as exc:
    print("refused:", exc)
"""


def unique_prefix() -> str:
    return "ft" + "".join(random.choices(string.ascii_lowercase + string.digits, k=3))


def leftovers(prefix: str) -> list[str]:
    """Namespaces, links and qdiscs on the host still named for ``prefix``."""

    def out(*argv: str) -> str:
        return subprocess.run(argv, capture_output=True, text=True, check=True).stdout

    names = out("ip", "netns", "list").split()
    names += [link["ifname"] for link in json.loads(out("ip", "-j", "link", "show"))]
    names += [line for line in out("tc", "qdisc", "show").splitlines() if f" {prefix}-" in line]
    return [name for name in names if name.startswith(f"{prefix}-") or f" {prefix}-" in name]


@pytest.fixture
def bed() -> Iterator[Testbed]:
    testbed = Testbed(unique_prefix(), nodes=3, rate="1gbit", delay_ms=0)
    try:
        yield testbed.up()
    finally:
        testbed.down()


def python_in(bed: Testbed, node: str, script: str, *args: object) -> subprocess.Popen[str]:
    """Start ``script`` in ``node``; if it prints "ready", return once it has."""
    proc = bed.exec(
        node, [sys.executable, "-c", script, *map(str, args)], stdout=subprocess.PIPE, text=True
    )
    if "ready" in script:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


def connects(bed: Testbed, node: str, host: str, port: int, timeout: float = 2.0) -> bool:
    done = bed.run(
        node, [sys.executable, "-c", CONNECT, host, str(port), str(timeout)], timeout=timeout + 10
    )
    return done.returncode == 0


def throughput_mbit(bed: Testbed, src: str, dst: str, seconds: float = 3.0) -> float:
    receiver = python_in(bed, dst, RECEIVE, 5201)
    python_in(bed, src, SEND, bed.address(dst), 5201, seconds).wait(timeout=seconds + 30)
    out, _ = receiver.communicate(timeout=30)
    return float(out)


def test_nodes_reach_each_other_and_the_host(bed: Testbed) -> None:
    for node in bed.nodes:
        python_in(bed, node, LISTEN, 7000)
    with socket.create_server((bed.host, 0)) as on_host:
        host_port = on_host.getsockname()[1]
        for node in bed.nodes:
            assert connects(bed, node, bed.host, host_port)
            for other in bed.nodes:
                assert connects(bed, node, bed.address(other), 7000), f"{node} -> {other}"
    assert [bed.address(n) for n in bed.nodes] == ["10.77.0.11", "10.77.0.12", "10.77.0.13"]
    with pytest.raises(UnknownNode, match="node9"):
        bed.address("node9")


@pytest.mark.parametrize(("rate", "low", "high"), [("1gbit", 700, 1100), ("100mbit", 70, 110)])
def test_throughput_matches_the_shaped_rate(
    bed: Testbed, rate: str, low: float, high: float
) -> None:
    for node in ("node1", "node2"):
        bed.shape(node, rate)  # re-shaped live, from the fixture's 1gbit
        assert bed.shaping(node) == Shape(rate)
    measured = throughput_mbit(bed, "node1", "node2")
    print(f"\nshaped {rate}: measured {measured:.1f} Mbit/s node1 -> node2")
    assert low <= measured <= high


def test_unshaped_link_is_much_faster(bed: Testbed) -> None:
    for node in ("node1", "node2"):
        bed.shape(node, None)
    assert bed.shaping("node1") == Shape(None)
    measured = throughput_mbit(bed, "node1", "node2", seconds=1.0)
    print(f"\nunshaped: measured {measured:.1f} Mbit/s node1 -> node2")
    assert measured > 1500


def test_loss_drops_that_share_of_packets(bed: Testbed) -> None:
    # Resolve ARP first: loss hits ARP too, and a lost reply stalls the first second.
    assert not connects(bed, "node1", bed.address("node2"), 9)  # refused, but resolved
    bed.shape("node2", "1gbit", loss_pct=20)
    assert bed.shaping("node2") == Shape("1gbit", loss_pct=20)
    receiver = python_in(bed, "node2", UDP_COUNT, 7001)
    python_in(bed, "node1", UDP_SEND, bed.address("node2"), 7001, 2000).wait(timeout=30)
    received = int(receiver.communicate(timeout=30)[0])
    assert 0.70 <= received / 2000 <= 0.90  # only node2's link is lossy: one 20 % drop


def test_delay_needs_netem(bed: Testbed) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        bed.shape("node2", "1gbit", delay_ms=5)
    if any(issubclass(w.category, ShapingWarning) for w in caught):
        assert bed.shaping("node2") == Shape("1gbit")  # not applied, and not pretended
        pytest.skip("this kernel has no netem: delay cannot be emulated")
    assert bed.shaping("node2") == Shape("1gbit", delay_ms=5)


def test_partition_cuts_a_node_off_and_heal_restores_it(bed: Testbed) -> None:
    python_in(bed, "node2", LISTEN, 7002)
    assert connects(bed, "node1", bed.address("node2"), 7002)
    bed.partition("node2")
    assert not connects(bed, "node1", bed.address("node2"), 7002, timeout=2)
    assert [n.partitioned for n in status(bed.prefix)] == [False, True, False]
    bed.heal("node2")
    assert connects(bed, "node1", bed.address("node2"), 7002, timeout=5)
    assert not any(n.partitioned for n in status(bed.prefix))


def test_redis_on_the_bridge_answers_with_the_password_only(bed: Testbed) -> None:
    with socket.create_server((bed.host, 0)) as probe:
        port = probe.getsockname()[1]
    url = bed.start_redis(port)
    assert url == bed.redis_url(port) and f"@{bed.host}:{port}/" in url
    with_password = bed.run("node1", [sys.executable, "-c", REDIS_PING, url], timeout=30)
    assert with_password.stdout.strip() == "True", with_password.stderr
    without = f"redis://{bed.host}:{port}/0"
    refused = bed.run("node3", [sys.executable, "-c", REDIS_PING, without], timeout=30)
    assert refused.stdout.startswith("refused:"), refused.stdout + refused.stderr


def test_down_removes_everything_and_can_repeat() -> None:
    testbed = Testbed(unique_prefix(), nodes=2, rate="100mbit", delay_ms=0, loss_pct=1).up()
    try:
        assert leftovers(testbed.prefix)
        sleeper = testbed.exec("node1", ["sleep", "600"])
        testbed.start_redis(6391)
        pidfile = Path(tempfile.gettempdir()) / f"ferry-testbed-{testbed.prefix}/redis-6391.pid"
        redis_pid = int(pidfile.read_text())
    finally:
        testbed.down()
    assert leftovers(testbed.prefix) == []
    assert sleeper.wait(timeout=10) != 0
    cmdline = Path(f"/proc/{redis_pid}/cmdline")  # a zombie's is empty
    assert not cmdline.exists() or b"redis-server" not in cmdline.read_bytes()
    assert not pidfile.parent.exists()
    testbed.down()


@pytest.mark.parametrize("clean", [lambda p: Testbed(p).down(), teardown], ids=["down", "teardown"])
def test_cleanup_after_a_crashed_run(clean: Callable[[str], None]) -> None:
    prefix = unique_prefix()
    try:
        crashed = subprocess.run(  # a run that set up, then went away without cleaning up
            [
                str(REPO / "ops" / "testbed"),
                "up",
                "--prefix",
                prefix,
                "--nodes",
                "2",
                "--rate",
                "100mbit",
                "--delay",
                "0",
                "--redis-port",
                "6392",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert crashed.returncode == 0, crashed.stderr
        assert "10.77.0.12" in crashed.stdout and "redis://:" in crashed.stdout
        clean(prefix)
        assert leftovers(prefix) == []
        assert status(prefix) == []
    finally:
        teardown(prefix)


def test_a_failed_up_leaves_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def fail_on_the_third_link(dev: str, shape: Shape, netns: str | None = None) -> None:
        calls.append(dev)
        if len(calls) == 3:
            raise PermanentError("injected")
        real_apply(dev, shape, netns)

    real_apply = shaping.apply
    monkeypatch.setattr(shaping, "apply", fail_on_the_third_link)
    testbed = Testbed(unique_prefix(), nodes=3, delay_ms=0)
    with pytest.raises(PermanentError, match="injected"):
        testbed.up()
    assert leftovers(testbed.prefix) == []


def test_up_refuses_a_prefix_or_subnet_in_use(bed: Testbed) -> None:
    with pytest.raises(PermanentError, match="already up"):
        Testbed(bed.prefix).up()
    other = Testbed(unique_prefix())
    with pytest.raises(PermanentError, match="subnet 10.77.0"):
        other.up()
    assert leftovers(other.prefix) == []
    assert len(status(bed.prefix)) == 3  # the running testbed is untouched


@pytest.mark.parametrize(
    "make",
    [
        lambda: Testbed("toolongprefix"),
        lambda: Testbed("ft", nodes=0),
        lambda: Testbed("ft", subnet="10.77"),
        lambda: Testbed("ft", rate="fast"),
        lambda: Testbed("ft", loss_pct=101),
        lambda: teardown(".*"),  # a prefix is never a pattern
    ],
)
def test_bad_input_is_refused_before_anything_runs(make: Callable[[], object]) -> None:
    with pytest.raises(BadRequest):
        make()
