"""What the restore's catcher keeps and how it re-checksums it (workers.runtimes.netcatch)."""

from __future__ import annotations

import socket
import struct

from tasks.core.netaddr import mac, parse
from workers.runtimes.netcatch import _checksummed, _tcp_to, arp_announcement

ADDR = parse("10.77.0.50/24")


def frame(
    dst: str = "10.77.0.50", proto: int = socket.IPPROTO_TCP, payload: bytes = b"7\n"
) -> bytes:
    """An Ethernet frame from 10.77.0.1 to ``dst``, its TCP checksum left partial (0xdead)."""
    tcp = struct.pack("!HHIIBBHHH", 40000, 7000, 1000, 2000, 5 << 4, 0x18, 502, 0xDEAD, 0)
    ip = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        20 + len(tcp) + len(payload),
        1,
        0x4000,
        64,
        proto,
        0,
        socket.inet_aton("10.77.0.1"),
        socket.inet_aton(dst),
    )
    eth = bytes.fromhex(mac(ADDR).replace(":", "")) + b"\x1e" * 6 + b"\x08\x00"
    return eth + ip + tcp + payload


def folded(data: bytes) -> int:
    data += b"\x00" * (len(data) % 2)
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def test_the_tcp_checksum_is_made_whole() -> None:
    for payload in (b"7\n", b"12\n", b""):  # even, odd and no payload
        fixed = _checksummed(frame(payload=payload))
        assert fixed[:34] == frame(payload=payload)[:34] and len(fixed) == len(
            frame(payload=payload)
        )
        pseudo = fixed[26:34] + struct.pack("!BBH", 0, socket.IPPROTO_TCP, len(fixed) - 34)
        assert folded(pseudo + fixed[34:]) == 0xFFFF  # what the receiver checks


def test_only_tcp_to_the_address_is_kept() -> None:
    ip = ADDR.ip.packed
    assert _tcp_to(frame(), ip)
    assert not _tcp_to(frame(dst="10.77.0.51"), ip)
    assert not _tcp_to(frame(proto=socket.IPPROTO_UDP), ip)
    assert not _tcp_to(frame()[:40], ip)  # truncated


def test_the_announcement_is_a_gratuitous_arp_from_the_address_mac() -> None:
    arp = arp_announcement(ADDR)
    hw = bytes.fromhex(mac(ADDR).replace(":", ""))
    assert arp[:6] == b"\xff" * 6 and arp[6:12] == hw and arp[12:14] == b"\x08\x06"
    assert arp[28:32] == arp[38:42] == ADDR.ip.packed  # sender and target: the address
