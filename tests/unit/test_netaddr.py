"""The pure decisions about a container's own address (tasks.core.netaddr)."""

from __future__ import annotations

import pytest

from tasks.core.netaddr import NodeNet, carry_refusal, check_carry, check_claim, mac, parse
from tasks.core.nodes import NodeRecord
from workers.errors import BadRequest, CapabilityError

NODES = [
    NodeNet("node1", "br0", ("10.77.0.11/24",)),
    NodeNet("node2", "br0", ("10.77.0.12/24",)),
    NodeNet("node3", "", ()),
]


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("10.77.0.50", "want ADDR/PREFIX"),
        ("10.77.0.50/33", "want ADDR/PREFIX"),
        ("10.77.0.300/24", "want ADDR/PREFIX"),
        ("fe80::1/64", "want ADDR/PREFIX"),
        ("10.77.0.50/24; rm -rf /", "want ADDR/PREFIX"),
        ("10.77.0.0/24", "network's own or broadcast"),
        ("10.77.0.255/24", "network's own or broadcast"),
        ("10.77.0.50/31", "no room for peers"),
    ],
)
def test_bad_addresses_are_refused(text: str, why: str) -> None:
    with pytest.raises(BadRequest, match=why):
        parse(text)


@pytest.mark.parametrize(
    ("text", "held", "why"),
    [
        ("10.88.0.50/24", {}, "outside the cluster networks: 10.77.0.0/24"),
        ("10.77.0.50/16", {}, "outside the cluster networks"),  # another network
        ("10.77.0.12/24", {}, "node2's own address"),
        ("10.77.0.50/24", {"web": "10.77.0.50/24"}, "already web's address: give db"),
    ],
)
def test_claims_that_collide_are_refused(text: str, held: dict[str, str], why: str) -> None:
    with pytest.raises(BadRequest, match=why):
        check_claim(text, "db", NODES, held)


def test_a_free_address_in_a_cluster_network_is_granted() -> None:
    held = {"web": "10.77.0.50/24", "gone": ""}
    assert str(check_claim("10.77.0.51/24", "db", NODES, held)) == "10.77.0.51/24"
    # a container re-claiming its own address (a restart) is not a conflict
    assert str(check_claim("10.77.0.50/24", "web", NODES, held)) == "10.77.0.50/24"


def test_no_bridge_anywhere_says_so() -> None:
    with pytest.raises(BadRequest, match="no node has a bridge"):
        check_claim("10.77.0.50/24", "db", [NODES[2]], {})


def test_a_node_carries_only_its_bridge_network() -> None:
    iface = parse("10.77.0.50/24")
    assert carry_refusal(NODES[0], iface) is None
    assert "no bridge" in str(carry_refusal(NODES[2], iface))
    other = NodeNet("pi9", "br0", ("192.168.1.9/24",))
    assert carry_refusal(other, iface) == "pi9's bridge br0 is on 192.168.1.0/24, not 10.77.0.0/24"
    with pytest.raises(CapabilityError, match="set FERRY_BRIDGE"):
        check_carry(NODES[2], iface)


def test_node_net_from_a_registry_record() -> None:
    rec = NodeRecord("pi1", bridge="br0", bridge_addresses=("10.0.0.2/24",))
    assert NodeNet.of(rec) == NodeNet("pi1", "br0", ("10.0.0.2/24",))
    assert NodeNet.of(NodeRecord("old")) == NodeNet("old", "", ())  # published before --net


def test_the_mac_is_the_address_and_locally_administered() -> None:
    first = int(mac(parse("192.168.1.7/24")).split(":")[0], 16)
    assert first & 0b10 and not first & 0b1  # locally administered, unicast
    assert mac(parse("192.168.1.7/24")) == "02:fe:c0:a8:01:07"
