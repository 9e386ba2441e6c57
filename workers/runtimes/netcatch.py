"""Catch what the peers send a moving address while it is restored, and hand it in after.

What a peer sent during the freeze was lost (CRIU's network lock, then the
source's ICMP refusal), and its TCP sends it again only when its
retransmission timer fires, every ~200 ms (its minimum timeout: the ICMP keeps
it from backing off). The first retry after the address is back comes up to
that long after it: the client's stall beyond the container's pause. So the
destination claims the address's frames on the LAN before the restore (a
gratuitous ARP from the node's bridge with the container's MAC; the source
has withdrawn it, and nothing here answers yet), keeps the TCP segments that
arrive for it, and once the tree is restored and the address announced, hands
them to the namespace through its veth: the peer's data is read at once, and
its own later copy is a duplicate its TCP drops.

Best effort, like the ICMP refusal: without a packet socket nothing is caught
and the move goes on as before. Nothing caught reaches the namespace but TCP
to the address, re-checksummed here.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from ipaddress import IPv4Interface

from tasks.core.netaddr import mac

ETH_P_ALL = 0x0003  # a bridge port's frames reach only these taps: the bridge takes them
PACKET_OUTGOING = 4
KEEP = 256  # segments at most: a few retries of each connection's lost segment


def arp_announcement(iface: IPv4Interface) -> bytes:
    """A gratuitous ARP request for ``iface`` from its MAC (broadcast)."""
    hw = bytes.fromhex(mac(iface).replace(":", ""))
    ip = iface.ip.packed
    frame = b"\xff" * 6 + hw + struct.pack("!H", 0x0806)  # broadcast, ARP
    return frame + struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) + hw + ip + b"\x00" * 6 + ip


class Catcher:
    """The TCP segments for ``iface`` that reach this node between :meth:`start` and
    :meth:`hand_in` (in the node's own network namespace: its uplink)."""

    def __init__(self, iface: IPv4Interface, bridge: str) -> None:
        self.iface = iface
        self.bridge = bridge
        self.caught: list[bytes] = []
        self._stop = threading.Event()
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> bool:
        """Claim the address's frames on the LAN and keep its TCP segments; False if
        this node cannot (no packet socket)."""
        try:
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
            sock.settimeout(0.05)
        except OSError:
            return False
        try:  # catching before the LAN is told: nothing sent here is missed
            with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as out:
                out.bind((self.bridge, 0))
                out.send(arp_announcement(self.iface))
        except OSError:
            sock.close()
            return False
        self._sock = sock
        self._thread = threading.Thread(target=self._catch, daemon=True, name="net-catch")
        self._thread.start()
        return True

    def stop(self) -> list[bytes]:
        """Stop catching (the thread closes its socket at its next wake); what was caught,
        oldest first."""
        self._stop.set()
        return list(self.caught)

    def hand_in(self, veth: str) -> int:
        """Stop, and send what was caught into the namespace through ``veth``; how many."""
        frames = self.stop()
        if not frames:
            return 0
        sent = 0
        with contextlib.suppress(OSError), socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as out:
            out.bind((veth, 0))
            for frame in frames:
                out.send(frame)
                sent += 1
        return sent

    def _catch(self) -> None:
        assert self._sock is not None
        with self._sock:
            self._keep(self._sock)

    def _keep(self, sock: socket.socket) -> None:
        ip, seen = self.iface.ip.packed, set()
        while not self._stop.is_set() and len(self.caught) < KEEP:
            try:
                frame, addr = sock.recvfrom(65535)
            except TimeoutError:
                continue
            except OSError:
                return
            if addr[2] == PACKET_OUTGOING or not _tcp_to(frame, ip):
                continue
            fixed = _checksummed(frame)
            if fixed[14:] not in seen:  # the same frame seen on the uplink and the bridge
                seen.add(fixed[14:])
                self.caught.append(fixed)


def _tcp_to(frame: bytes, ip: bytes) -> bool:
    return (
        len(frame) >= 54
        and frame[12:14] == b"\x08\x00"
        and frame[14] >> 4 == 4
        and frame[23] == socket.IPPROTO_TCP
        and frame[30:34] == ip
    )


def _checksummed(frame: bytes) -> bytes:
    """``frame`` with its TCP checksum computed (a veth's frames may carry a partial one)."""
    ihl = (frame[14] & 15) * 4
    total = struct.unpack("!H", frame[16:18])[0]
    tcp = bytearray(frame[14 + ihl : 14 + total])
    tcp[16:18] = b"\x00\x00"
    pseudo = frame[26:34] + struct.pack("!BBH", 0, socket.IPPROTO_TCP, len(tcp))
    data = pseudo + bytes(tcp) + (b"\x00" if len(tcp) % 2 else b"")
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    tcp[16:18] = struct.pack("!H", ~s & 0xFFFF)
    return frame[: 14 + ihl] + bytes(tcp)
