"""A local cluster on one machine: N nodes, each a network namespace on a bridge.

    host    <prefix>-br      <subnet>.1/24    the host: Redis and anything else every node needs
      ├── <prefix>-node1  ══  eth0 <subnet>.11/24   in netns <prefix>-node1
      ├── <prefix>-node2  ══  eth0 <subnet>.12/24   in netns <prefix>-node2
      └── ...

Each node's link is shaped in both directions (see ``tests.testbed.shaping``), so a
node-to-node path crosses two shaped links: it runs at the lower of the two
rates and picks up both links' delay each way.

With ``bridge="br0"`` each node's eth0 is a port of a bridge of that name
inside the node, which holds the node's address: what a node whose containers
have their own addresses looks like (``FERRY_BRIDGE``; the containers' veths
join it). The nodes have no default route: traffic stays on the bridge. A service meant
for the nodes must listen on the bridge address ``<subnet>.1``; one bound to
127.0.0.1 is NOT reachable from a node, whose 127.0.0.1 is its own loopback.
``Testbed.start_redis`` starts a private, password-protected Redis there.
On a host whose firewall filters bridged traffic (br_netfilter under Docker's
FORWARD DROP policy), node-to-node packets are dropped: accept ``<prefix>-br``.

Command line (``ops/testbed`` wraps it)::

    python -m tests.testbed.cluster up --nodes 3 --rate 100mbit --delay 1 [--redis-port 6390]
    python -m tests.testbed.cluster status
    python -m tests.testbed.cluster down
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import re
import shutil
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

from tests.testbed import redis_server as testbed_redis
from tests.testbed import shaping
from tests.testbed.iproute import ip, ip_json, kill_netns_processes, link_names, netns_names
from tests.testbed.shaping import Shape
from workers.errors import BadRequest, CapabilityError, FerryError, PermanentError, UnknownNode

_IFNAMSIZ = 15  # longest interface name Linux accepts
Completed = subprocess.CompletedProcess[str]


@dataclass(frozen=True)
class NodeStatus:
    """One node of a running testbed, as the kernel reports it."""

    node: str
    address: str
    partitioned: bool
    shape: Shape


class Testbed:
    """N nodes as network namespaces on a bridge, with shaped links; ``up()`` it, then ``down()``."""

    __test__ = False  # not a pytest test class, despite the name

    def __init__(
        self,
        prefix: str = "fy",
        nodes: int = 3,
        subnet: str = "10.77.0",
        rate: str | None = "1gbit",
        delay_ms: float = 0.5,
        loss_pct: float = 0,
        bridge: str | None = None,
    ) -> None:
        _check_prefix(prefix)
        if bridge is not None and not re.fullmatch(r"[a-z][a-z0-9]{0,14}", bridge):
            raise BadRequest(f"bad bridge name {bridge!r}")
        self.bridge = bridge
        if not 1 <= nodes <= 244:
            raise BadRequest(f"bad node count {nodes}: use 1 to 244")
        if len(f"{prefix}-node{nodes}") > _IFNAMSIZ:
            raise BadRequest(f"prefix {prefix!r} too long: '{prefix}-node{nodes}' exceeds 15 chars")
        try:
            ipaddress.IPv4Network(f"{subnet}.0/24")
        except ValueError:
            raise BadRequest(f"bad subnet {subnet!r}: give three octets, e.g. 10.77.0") from None
        self.prefix, self.subnet = prefix, subnet
        self.nodes = [f"node{i}" for i in range(1, nodes + 1)]
        self.initial_shape = Shape(rate, delay_ms, loss_pct)

    @property
    def host(self) -> str:
        """The host's address on the bridge, reachable from every node."""
        return f"{self.subnet}.1"

    def address(self, node: str) -> str:
        """The node's address on the bridge."""
        return f"{self.subnet}.{10 + self.nodes.index(self._check(node)) + 1}"

    def up(self) -> Self:
        """Create the bridge and the nodes, shaped; on failure remove what was made."""
        _preflight()
        if _namespaces(self.prefix) or _links(self.prefix):
            raise PermanentError(
                f"testbed {self.prefix!r} is already up: run `ops/testbed down --prefix {self.prefix}`"
            )
        for link in ip_json("-4", "addr", "show"):
            if any(a.get("local") == self.host for a in link.get("addr_info", [])):
                raise PermanentError(
                    f"{self.host} is already on {link['ifname']}: another testbed uses subnet "
                    f"{self.subnet}; take it down or pick another subnet"
                )
        try:
            bridge = f"{self.prefix}-br"
            ip("link", "add", bridge, "type", "bridge")
            ip("addr", "add", f"{self.host}/24", "dev", bridge)
            ip("link", "set", bridge, "up")
            for node in self.nodes:
                ns = veth = f"{self.prefix}-{node}"
                ip("netns", "add", ns)
                ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
                ip("link", "set", veth, "master", bridge, "up")
                dev = self.bridge or "eth0"
                if self.bridge:
                    ip("-n", ns, "link", "add", self.bridge, "type", "bridge")
                    ip("-n", ns, "link", "set", "eth0", "master", self.bridge)
                    mac = ip_json("-n", ns, "link", "show", "dev", "eth0")[0]["address"]
                    ip("-n", ns, "link", "set", self.bridge, "address", mac)  # fixed, as on a Pi
                    ip("-n", ns, "link", "set", self.bridge, "up")
                ip("-n", ns, "addr", "add", f"{self.address(node)}/24", "dev", dev)
                ip("-n", ns, "link", "set", "lo", "up")
                ip("-n", ns, "link", "set", "eth0", "up")
                self._apply(node, self.initial_shape)
        except BaseException:
            self.down()
            raise
        return self

    def down(self) -> None:
        """Remove everything this testbed's prefix names; safe to repeat."""
        teardown(self.prefix)

    def exec(self, node: str, argv: list[str], **popen_kwargs: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` inside the node's namespace."""
        return subprocess.Popen(["ip", "netns", "exec", self._ns(node), *argv], **popen_kwargs)

    def run(self, node: str, argv: list[str], timeout: float | None = None) -> Completed:
        """Run ``argv`` inside the node's namespace to completion, capturing its output."""
        inside = ["ip", "netns", "exec", self._ns(node), *argv]
        return subprocess.run(inside, capture_output=True, text=True, timeout=timeout, check=False)

    def partition(self, node: str) -> None:
        """Cut the node off the bridge (its link goes down) until ``heal``."""
        ip("link", "set", self._ns(node), "down")

    def heal(self, node: str) -> None:
        """Reconnect a partitioned node."""
        ip("link", "set", self._ns(node), "up")

    def shape(
        self, node: str, rate: str | None, delay_ms: float = 0.0, loss_pct: float = 0.0
    ) -> None:
        """Re-shape the node's link, both directions, while it runs."""
        self._apply(node, Shape(rate, delay_ms, loss_pct))

    def shaping(self, node: str) -> Shape:
        """The node's link shaping as the kernel reports it."""
        return shaping.read("eth0", netns=self._ns(node))

    def redis_url(self, port: int) -> str:
        """URL (with password) of the testbed Redis on ``port``, as the nodes reach it."""
        return testbed_redis.redis_url(self.host, port, testbed_redis.state_dir(self.prefix))

    def start_redis(self, port: int = 6390) -> str:
        """Start a private Redis on the bridge, stopped by ``down``; return its URL."""
        return testbed_redis.start_redis(self.host, port, testbed_redis.state_dir(self.prefix))

    def _apply(self, node: str, shape: Shape) -> None:
        shaping.apply("eth0", shape, netns=self._ns(node))  # node -> bridge
        shaping.apply(self._ns(node), shape)  # bridge -> node

    def _check(self, node: str) -> str:
        if node not in self.nodes:
            raise UnknownNode(node, self.nodes)
        return node

    def _ns(self, node: str) -> str:
        return f"{self.prefix}-{self._check(node)}"

    def __enter__(self) -> Self:
        return self.up()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.down()


def teardown(prefix: str) -> None:
    """Remove every namespace, link, qdisc, process and Redis of the testbed ``prefix``."""
    _check_prefix(prefix)
    _preflight()
    state = testbed_redis.state_dir(prefix)
    testbed_redis.stop_all(state)
    for ns in _namespaces(prefix):
        kill_netns_processes(ns)
        ip("netns", "del", ns, missing_ok=True)
    for link in _links(prefix):  # the bridge, and veths a lingering process kept alive
        ip("link", "del", link, missing_ok=True)
    deadline = time.monotonic() + 5
    while _links(prefix) and time.monotonic() < deadline:  # netns cleanup runs async
        time.sleep(0.05)
    shutil.rmtree(state, ignore_errors=True)


def status(prefix: str) -> list[NodeStatus]:
    """The nodes of the running testbed ``prefix``, sorted by number."""
    _check_prefix(prefix)
    _preflight()
    nodes = []
    for ns in sorted(_namespaces(prefix), key=lambda name: int(name.rsplit("node", 1)[1])):
        found = [  # on eth0, or on the node's bridge
            a["local"]
            for link in ip_json("-n", ns, "-4", "addr", "show", "scope", "global", missing_ok=True)
            for a in link.get("addr_info", ())
        ]
        address = found[0] if found else "?"
        host_side = ip_json("link", "show", ns, missing_ok=True)
        down = not host_side or "UP" not in host_side[0]["flags"]
        nodes.append(
            NodeStatus(ns.removeprefix(f"{prefix}-"), address, down, shaping.read("eth0", ns))
        )
    return nodes


def _check_prefix(prefix: str) -> None:
    if not re.fullmatch(r"[a-z][a-z0-9]{0,8}", prefix):
        raise BadRequest(f"bad prefix {prefix!r}: use 1 to 9 lowercase letters and digits")


def _preflight() -> None:
    if os.geteuid() != 0:
        raise CapabilityError("the testbed needs root for ip netns: run it as root")
    if not (shutil.which("ip") and shutil.which("tc")):
        raise CapabilityError("`ip` or `tc` not found: install iproute2 (apt-get install iproute2)")


def _namespaces(prefix: str) -> list[str]:
    return [n for n in netns_names() if re.fullmatch(rf"{re.escape(prefix)}-node\d+", n)]


def _links(prefix: str) -> list[str]:
    return [n for n in link_names() if re.fullmatch(rf"{re.escape(prefix)}-(br|node\d+)", n)]


def main(argv: list[str] | None = None) -> int:
    """``python -m tests.testbed.cluster up|down|status``; exit code per ``workers.errors``."""
    parser = argparse.ArgumentParser(prog="ops/testbed", description="ferry's local testbed")
    parser.add_argument("command", choices=["up", "down", "status"])
    parser.add_argument("--prefix", default="fy", help="names everything (default fy)")
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--subnet", default="10.77.0", help="first three octets")
    parser.add_argument("--rate", default="1gbit", help="per link, tc syntax, or 'none'")
    parser.add_argument("--delay", type=float, default=0.5, help="ms per link and direction")
    parser.add_argument("--loss", type=float, default=0.0, help="%% per link and direction")
    parser.add_argument("--redis-port", type=int, help="also start a Redis on the bridge")
    args = parser.parse_args(argv)
    try:
        if args.command == "up":
            rate = None if args.rate.lower() == "none" else args.rate
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                bed = Testbed(args.prefix, args.nodes, args.subnet, rate, args.delay, args.loss)
                bed.up()
            for message in dict.fromkeys(str(w.message) for w in caught):
                print(f"warning: {message}", file=sys.stderr)
            if args.redis_port:
                bed.start_redis(args.redis_port)
        elif args.command == "down":
            teardown(args.prefix)
            return 0
        _print_status(args.prefix)
    except FerryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


def _print_status(prefix: str) -> None:
    nodes = status(prefix)
    if not nodes:
        print(f"testbed {prefix!r} is down")
        return
    for n in nodes:
        link = "PARTITIONED" if n.partitioned else "up"
        print(f"{n.node:<8} {f'{prefix}-{n.node}':<14} {n.address:<15} {link:<11} {n.shape}")
    state = testbed_redis.state_dir(prefix)
    host = nodes[0].address.rsplit(".", 1)[0] + ".1"
    for port in testbed_redis.running(state):
        print(f"redis    {testbed_redis.redis_url(host, port, state)}")


if __name__ == "__main__":
    sys.exit(main())
