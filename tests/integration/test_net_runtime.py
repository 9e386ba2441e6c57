"""A container's own address and TCP connections across a real CRIU move, at the runtime seam.

Two ``criu`` runtimes with their own state dirs are two nodes on one bridge
(the host's, made here, on a private /24); an echo server runs in a container
with its own address, a client on the host holds one connection to it. The
dump withdraws the address, the restore on the other node brings it back with
the connection, and the client never notices more than a stall; the same with a
hundred connections at once and a UDP socket.
"""

from __future__ import annotations

import contextlib
import os
import random
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tasks.core.netaddr import parse
from tests.conftest import criu_works, need
from tests.integration.helpers import wait_for
from tests.tcpecho import PORT, SERVER, EchoClient
from workers import procs
from workers.criu.adapter import Criu
from workers.errors import BadRequest, CriuError, FerryError
from workers.runtimes.criu import CriuRuntime
from workers.runtimes.netns import NetIdentity


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@pytest.fixture
def bridge(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """A bridge on the host with a private /24: (its name, the first three octets);
    what a failed test left on its nodes a and b (containers, namespaces) goes after it."""
    need(os.geteuid() == 0, "containers with their own network need root")
    ok, why = criu_works()
    need(ok, why)
    name, subnet = f"fnt{random.randrange(1 << 20):05x}", f"10.78.{random.randrange(1, 250)}"
    ip("link", "add", name, "type", "bridge")
    ip("addr", "add", f"{subnet}.1/24", "dev", name)
    ip("link", "set", name, "up")
    yield name, subnet
    for home in ("a", "b"):
        rt = node(tmp_path, home, name)
        for c in rt.containers():
            with contextlib.suppress(FerryError):
                rt.kill(c.name)
    subprocess.run(["ip", "link", "del", name], check=False, capture_output=True)


def node(tmp_path: Path, name: str, bridge: str) -> CriuRuntime:
    criu = Criu(os.environ.get("FERRY_CRIU_BIN", "criu"))
    return CriuRuntime(tmp_path / name, tmp_path / "shared", criu, bridge=bridge)


def links() -> set[str]:
    out = subprocess.run(["ip", "-br", "link"], capture_output=True, text=True).stdout
    return {line.split()[0].split("@")[0] for line in out.splitlines()}


def test_the_address_and_the_connection_move_and_survive_a_rollback(
    tmp_path: Path, bridge: tuple[str, str]
) -> None:
    name, subnet = bridge
    a, b = node(tmp_path, "a", name), node(tmp_path, "b", name)
    info = a.start("echo", ["python3", "-c", SERVER], net=f"{subnet}.50/24")
    assert info.net == f"{subnet}.50/24" and a.get("echo").net == info.net
    client = wait_for(lambda: _connect(f"{subnet}.50")).start()
    try:
        wait_for(lambda: client.answered() > 20)
        # a rollback: dumped and frozen, then resumed from its images on the same node
        a.checkpoint("echo", tmp_path / "img1")
        a.resume("echo", tmp_path / "img1")
        seen = client.answered()
        wait_for(lambda: client.answered() > seen + 20, timeout=30)
        # the move: dumped on a (the address withdrawn), restored on b, the source removed
        a.checkpoint("echo", tmp_path / "img2")
        b.restore("echo", tmp_path / "img2")
        a.kill("echo")
        seen = client.answered()
        wait_for(lambda: client.answered() > seen + 20, timeout=30)
        assert b.get("echo").net == f"{subnet}.50/24" and b.get("echo").state == "running"
    finally:
        got = client.stop()
    print(f"client: {len(got.answers)} answers, longest stall {got.longest_s * 1000:.0f} ms")
    assert not got.error, got.error
    assert got.in_order, "an answer was lost, repeated or out of order"
    b.kill("echo")
    iface = parse(f"{subnet}.50/24")
    veths = {NetIdentity(r.state_dir, "echo", iface, name).veth for r in (a, b)}
    assert not veths & links()  # nothing left behind on either node
    assert not (tmp_path / "a" / "netns" / "echo").exists()


def test_post_copy_moves_the_connection_and_a_failed_page_transfer_leaves_it_on_the_source(
    tmp_path: Path, bridge: tuple[str, str]
) -> None:
    name, subnet = bridge
    a, b = node(tmp_path, "a", name), node(tmp_path, "b", name)
    a.start("echo", ["python3", "-c", SERVER, "32"], net=f"{subnet}.50/24")
    client = wait_for(lambda: _connect(f"{subnet}.50")).start()
    try:
        wait_for(lambda: client.answered() > 20)
        # rolled back before any page went: the destination hung up (CRIU takes that for
        # the end: the tree stays stopped), or spoke nonsense (the transfer fails: CRIU
        # lets the tree go, and the SIGSTOP ferry queued stops it)
        for said, ends in (
            (b"", contextlib.nullcontext()),
            (b"\xff" * 24, pytest.raises(CriuError)),
        ):
            port = _free_port()
            images = tmp_path / f"lazy-{len(said)}"
            a.checkpoint_lazy("echo", images, "127.0.0.1", port)
            with socket.create_connection(("127.0.0.1", port), timeout=5) as peer:
                peer.sendall(said)
            with ends:
                a.wait_lazy("echo", images, 30)
            pid = a.get("echo").pid
            wait_for(lambda p=pid: {procs.state(t) for t in procs.tree(p)} == {"T"}, timeout=10)  # type: ignore[misc]
            a.resume("echo")
            seen = client.answered()
            wait_for(lambda s=seen: client.answered() > s + 20, timeout=30)  # type: ignore[misc]
        # the move: restored on b at once, its pages pulled from a's page server after
        port = _free_port()
        a.checkpoint_lazy("echo", tmp_path / "lazy2", "127.0.0.1", port)
        b.restore(
            "echo",
            tmp_path / "lazy2",
            page_server=lambda: socket.create_connection(("127.0.0.1", port)),
        )
        a.wait_lazy("echo", tmp_path / "lazy2", 60)
        a.kill("echo")
        seen = client.answered()
        wait_for(lambda: client.answered() > seen + 20, timeout=30)
        assert b.get("echo").state == "running" and b.lazy_report(tmp_path / "lazy2").bytes > 0
    finally:
        got = client.stop()
    print(f"client: {len(got.answers)} answers, longest stall {got.longest_s * 1000:.0f} ms")
    assert not got.error, got.error
    assert got.in_order, "an answer was lost, repeated or out of order"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_bad_addresses_change_nothing(tmp_path: Path, bridge: tuple[str, str]) -> None:
    name, subnet = bridge
    a = node(tmp_path, "a", name)
    before = links()
    for net, why in [
        ("10.99.0.5/24", "outside the cluster networks"),
        (f"{subnet}.1/24", "own address"),
        (f"{subnet}.7", "want ADDR/PREFIX"),
    ]:
        with pytest.raises(BadRequest, match=why):
            a.start("bad", ["sleep", "60"], net=net)
    a.start("first", ["sleep", "60"], net=f"{subnet}.60/24")
    try:
        with pytest.raises(BadRequest, match="already first's address"):
            a.start("second", ["sleep", "60"], net=f"{subnet}.60/24")
        assert [c.name for c in a.containers()] == ["first"]
    finally:
        a.kill("first")
    assert links() == before
    assert not a.has("bad") and not (tmp_path / "a" / "netns" / "bad").exists()


def _connect(address: str) -> EchoClient | None:
    try:
        return EchoClient(address)
    except OSError:
        return None


def test_a_hundred_connections_and_udp_move_together(
    tmp_path: Path, bridge: tuple[str, str]
) -> None:
    name, subnet = bridge
    a, b = node(tmp_path, "a", name), node(tmp_path, "b", name)
    a.start("echo", ["python3", "-c", SERVER], net=f"{subnet}.50/24")
    first = wait_for(lambda: _connect(f"{subnet}.50"))
    clients = [first] + [EchoClient(f"{subnet}.50", every_s=0.1) for _ in range(99)]
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.settimeout(0.2)
    for c in clients:
        c.start()
    try:
        wait_for(lambda: min(c.answered() for c in clients) > 3, timeout=30)
        a.checkpoint("echo", tmp_path / "img")
        b.restore("echo", tmp_path / "img")
        a.kill("echo")
        seen = [c.answered() for c in clients]
        wait_for(
            lambda: all(c.answered() > s + 3 for c, s in zip(clients, seen, strict=True)),
            timeout=60,
        )
        assert wait_for(lambda: _udp_echo(udp, f"{subnet}.50"), timeout=10)  # the same socket
    finally:
        got = [c.stop() for c in clients]
        udp.close()
        b.kill("echo")
    assert not [g.error for g in got if g.error]
    assert all(g.in_order for g in got), "an answer was lost, repeated or out of order"


def _udp_echo(sock: socket.socket, address: str) -> bool:
    sock.sendto(b"ping", (address, PORT))
    try:
        return sock.recvfrom(64)[0] == b"ping"
    except OSError:
        return False
