"""A container's own network address: may it claim one, may a node carry it.

Pure: the address asked for, what the nodes publish about their bridges and
which containers hold which address in; the parsed address, a refusal
(BadRequest / CapabilityError naming who is in the way), or a reason.

A node that can give containers an address publishes its bridge and the
bridge's own addresses (``NodeNet``); the cluster networks are the networks of
those addresses. A container's address must lie in one of them, be neither a
network nor a broadcast address, nor any node's own address, and be held by no
other container.

>>> nodes = [NodeNet("pi1", "br0", ("10.77.0.11/24",)), NodeNet("pi2", "", ())]
>>> str(check_claim("10.77.0.50/24", "web", nodes, {}))
'10.77.0.50/24'
>>> check_claim("10.77.0.50/24", "db", nodes, {"web": "10.77.0.50/24"})
Traceback (most recent call last):
...
workers.errors.BadRequest: 10.77.0.50 is already web's address: give db another one
>>> carry_refusal(nodes[1], parse("10.77.0.50/24"))
'pi2 has no bridge for container addresses (set FERRY_BRIDGE on it)'
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Interface, IPv4Network
from typing import TYPE_CHECKING

from workers.errors import BadRequest, CapabilityError

if TYPE_CHECKING:  # tasks.core.nodes imports the chooser, which needs nothing of this
    from tasks.core.nodes import NodeRecord


@dataclass(frozen=True)
class NodeNet:
    """What a node publishes about container networking: its bridge and the bridge's addresses."""

    node: str
    bridge: str  # "": this node gives containers no address
    addresses: tuple[str, ...]  # the bridge's own, "10.77.0.11/24"

    @property
    def interfaces(self) -> tuple[IPv4Interface, ...]:
        return tuple(IPv4Interface(a) for a in self.addresses)

    @property
    def networks(self) -> tuple[IPv4Network, ...]:
        return tuple(i.network for i in self.interfaces)

    @classmethod
    def of(cls, rec: NodeRecord) -> NodeNet:
        """From a node's registry record (one published before --net: no bridge)."""
        return cls(rec.name, rec.bridge, rec.bridge_addresses)


def parse(text: str) -> IPv4Interface:
    """``ADDR/PREFIX`` as an interface address; BadRequest for anything else.

    >>> parse("10.77.0.50/24").network
    IPv4Network('10.77.0.0/24')
    >>> parse("10.77.0.50")
    Traceback (most recent call last):
    ...
    workers.errors.BadRequest: bad --net '10.77.0.50': want ADDR/PREFIX, e.g. 10.77.0.50/24
    """
    if not isinstance(text, str) or text.count("/") != 1:
        raise BadRequest(f"bad --net {text!r}: want ADDR/PREFIX, e.g. 10.77.0.50/24")
    try:
        iface = IPv4Interface(text)
    except (ipaddress.AddressValueError, ipaddress.NetmaskValueError, ValueError):
        raise BadRequest(f"bad --net {text!r}: want ADDR/PREFIX, e.g. 10.77.0.50/24") from None
    if iface.network.prefixlen > 30:
        raise BadRequest(f"bad --net {text!r}: a /{iface.network.prefixlen} has no room for peers")
    if iface.ip in (iface.network.network_address, iface.network.broadcast_address):
        raise BadRequest(f"bad --net {text!r}: that is the network's own or broadcast address")
    return iface


def check_claim(
    text: str, name: str, nodes: Iterable[NodeNet], held: Mapping[str, str]
) -> IPv4Interface:
    """Container ``name`` may claim address ``text``: parsed, or why not.

    ``held``: container name -> the address it holds, for every container
    that is not gone.
    """
    iface = parse(text)
    nodes = list(nodes)
    networks = {n for node in nodes for n in node.networks}
    if iface.network not in networks:
        known = ", ".join(sorted(str(n) for n in networks)) or "none (no node has a bridge)"
        raise BadRequest(f"{iface} is outside the cluster networks: {known}")
    for node in nodes:
        if any(i.ip == iface.ip for i in node.interfaces):
            raise BadRequest(f"{iface.ip} is {node.node}'s own address: pick a free one")
    for other, address in sorted(held.items()):
        if other != name and address and parse(address).ip == iface.ip:
            raise BadRequest(f"{iface.ip} is already {other}'s address: give {name} another one")
    return iface


def carry_refusal(node: NodeNet, iface: IPv4Interface) -> str | None:
    """Why ``node`` cannot carry a container with address ``iface``; None: it can."""
    if not node.bridge:
        return f"{node.node} has no bridge for container addresses (set FERRY_BRIDGE on it)"
    if iface.network not in node.networks:
        on = ", ".join(str(n) for n in node.networks) or "no network"
        return f"{node.node}'s bridge {node.bridge} is on {on}, not {iface.network}"
    return None


def check_carry(node: NodeNet, iface: IPv4Interface) -> None:
    """CapabilityError unless ``node`` can carry ``iface``."""
    why = carry_refusal(node, iface)
    if why is not None:
        raise CapabilityError(why)


def mac(iface: IPv4Interface) -> str:
    """The container's MAC, made from its address: the same on every node, so a
    peer's ARP entry stays right across a move and only the switch must relearn.

    >>> mac(parse("10.77.0.50/24"))
    '02:fe:0a:4d:00:32'
    """
    return "02:fe:" + ":".join(f"{b:02x}" for b in iface.ip.packed)
