"""A container's own network: a namespace with one veth into the node's bridge.

    node's bridge (FERRY_BRIDGE) ── fv<hash>  ══  eth0 ADDR/PREFIX, MAC from ADDR   (the netns)

The namespace is kept alive by a bind mount on a file in the node's state
dir (``<home>/netns/<container>``), so it outlives its processes: the launcher
joins it, CRIU dumps the container with it as external and restores into a
fresh one on the destination (``--inherit-fd``). The outside end of the veth
is the switch: off the bridge, the address is off the network (the source
takes it off after the dump; the destination builds its copy off the bridge
and puts it on once the tree is restored), on it, a gratuitous ARP tells the
peers and the bridges where the address now is.

Everything here runs ``ip``, ``unshare``, ``umount`` and ``nft`` with argument lists,
never a shell; names are made here from checked container names.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import ipaddress
import json
import os
import re
import signal
import socket
import subprocess
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from ipaddress import IPv4Interface
from pathlib import Path
from typing import Any

from tasks.core.netaddr import NodeNet, check_carry, check_claim, mac
from workers import procs
from workers.criu.adapter import Criu
from workers.errors import CapabilityError, PermanentError
from workers.records import RestoreStats
from workers.runtimes.netcatch import Catcher, arp_announcement

CLONE_NEWNET = 0x40000000
INSIDE = "eth0"  # the container's interface
NEIGHBOURS = "ferry-neighbours.json"  # in the images: the peers' MACs the container knew
MAC = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")


@dataclass(frozen=True)
class Bridge:
    """The node's bridge, as the kernel reports it."""

    name: str
    addresses: tuple[str, ...]  # its IPv4 addresses, "10.77.0.11/24"


def bridge(name: str) -> Bridge:
    """The bridge ``name`` with its addresses; CapabilityError if it is not a bridge here."""
    links = _ip_json("-d", "link", "show", "dev", name)
    if not links or links[0].get("linkinfo", {}).get("info_kind") != "bridge":
        raise CapabilityError(f"FERRY_BRIDGE={name}: no bridge of that name on this node")
    addrs = _ip_json("-4", "addr", "show", "dev", name)
    found = tuple(f"{a['local']}/{a['prefixlen']}" for a in addrs[0].get("addr_info", ()))
    return Bridge(name, found)


@dataclass(frozen=True)
class NetIdentity:
    """One container's network on this node: its namespace file and its veth."""

    home: Path  # the node's state dir
    name: str
    iface: IPv4Interface
    bridge: str

    @property
    def path(self) -> Path:
        return self.home / "netns" / self.name

    @property
    def veth(self) -> str:
        """The outside end's name: unique per node and container, 15 chars at most."""
        return (
            "fv" + hashlib.blake2s(f"{self.home}/{self.name}".encode(), digest_size=6).hexdigest()
        )

    def create(self) -> None:
        """Make the namespace and its veth, both ends up, the address on, the outside end
        not yet a port of the bridge (:meth:`announce` makes it one).

        Up from the start: a link that just came up drops what is sent on it until
        the kernel's link watch has activated it, up to a second later, and the
        gratuitous ARP and the restored connections' first packets must not be
        lost to that."""
        self.remove()
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.path.touch(mode=0o400)
        try:
            _run("unshare", f"--net={self.path}", "true")
            # A high MAC outside: a bridge whose MAC nobody set takes its lowest port's,
            # and a node address whose MAC came and went with a container's veth would
            # leave the peers' ARP entries for the node pointing nowhere.
            outside = "fe:ff:" + ":".join(self.veth[i : i + 2] for i in range(2, 10, 2))
            peer = ["peer", "name", INSIDE, "netns", str(self.path)]
            _ip("link", "add", self.veth, "address", outside, "type", "veth", *peer)
            inside = ["nsenter", f"--net={self.path}", "ip"]
            _run(*inside, "link", "set", "lo", "up")
            _run(*inside, "link", "set", INSIDE, "address", mac(self.iface))
            _run(*inside, "addr", "add", str(self.iface), "dev", INSIDE)
            _run(*inside, "link", "set", INSIDE, "up")
            _ip("link", "set", self.veth, "up")
        except BaseException:
            self.remove()
            raise

    def inode(self) -> int:
        """The namespace's inode: how CRIU names it (``--external net[INO]:KEY``)."""
        return os.stat(self.path).st_ino

    def open(self) -> int:
        """An fd on the namespace, for ``criu restore --inherit-fd``."""
        return os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)

    def withdraw(self, images: Path) -> None:
        """Take the address off the network: the outside end leaves the bridge, and what
        still arrives for it here is answered "host unreachable" (:meth:`refuse`).
        The namespace's neighbour table goes with the images (:meth:`seed`)."""
        _ip("link", "set", self.veth, "nomaster")
        self.refuse()
        inside = _ip_json_in(self.path, "-4", "neigh", "show", "dev", INSIDE)
        known = [{"dst": n["dst"], "lladdr": n["lladdr"]} for n in inside if "lladdr" in n]
        (images / NEIGHBOURS).write_text(json.dumps(known))

    def seed(self, images: Path) -> None:
        """Give the fresh namespace the neighbours the dumped one knew, as stale entries.

        A fresh namespace knows no peer's MAC: the first packets of the restored
        connections would wait for ARP, and a request sent before the veth is on
        the bridge is lost and retried only after a second (retrans_time_ms).
        """
        try:
            known = json.loads((images / NEIGHBOURS).read_text())
        except (OSError, ValueError):
            return
        for n in known if isinstance(known, list) else ():
            dst, mac = str(n.get("dst", "")), str(n.get("lladdr", "")).lower()
            if not (_is_ipv4(dst) and MAC.fullmatch(mac)):
                continue  # written by a node, but checked like anything read from disk
            _run(
                "nsenter",
                f"--net={self.path}",
                "ip",
                "neigh",
                "replace",
                dst,
                "lladdr",
                mac,
                "dev",
                INSIDE,
                "nud",
                "stale",
            )

    def announce(self) -> None:
        """Put the address on the network here and tell the peers (gratuitous ARP)."""
        self.unrefuse()
        _ip("link", "set", self.veth, "master", self.bridge)
        garp(self.path, self.iface)

    @property
    def _table(self) -> str:
        return f"ferry_{self.veth}"

    def refuse(self) -> bool:
        """Answer packets for the address that reach the bridge's other ports with ICMP
        host unreachable until it is back (here or elsewhere). A peer's TCP takes
        that as the path being down, not as loss (RFC 6069): it undoes its
        retransmission backoff and tries again within its minimum timeout, so
        its stall ends soon after the move instead of at the next doubled
        timeout. Best effort (no nft, no netdev reject in the kernel: False): the
        move does not need it."""
        links = _ip_json("link", "show", "master", self.bridge)
        ports = [str(p["ifname"]) for p in links if not str(p["ifname"]).startswith("fv")]
        if not ports:
            return False
        devices = ", ".join(f'"{p}"' for p in ports)
        rules = (
            f"table netdev {self._table} {{\n"
            f"  chain in {{ type filter hook ingress devices = {{ {devices} }} priority 0;\n"
            f"    ip daddr {self.iface.ip} ip protocol tcp reject with icmp host-unreachable; }}\n"
            "}\n"
        )
        try:
            done = subprocess.run(
                ["nft", "-f", "-"], input=rules, capture_output=True, text=True, timeout=10
            )
        except (OSError, subprocess.TimeoutExpired):
            return False
        return done.returncode == 0

    def unrefuse(self) -> None:
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            subprocess.run(
                ["nft", "delete", "table", "netdev", self._table], capture_output=True, timeout=10
            )

    def remove(self) -> None:
        """Delete the veth and the namespace; safe to repeat."""
        self.unrefuse()
        subprocess.run(["ip", "link", "del", self.veth], capture_output=True, check=False)
        if self.path.exists():
            subprocess.run(["umount", str(self.path)], capture_output=True, check=False)
            self.path.unlink(missing_ok=True)


def claim(
    home: Path, bridge_name: str, name: str, net: str, held: Mapping[str, str]
) -> NetIdentity:
    """Build container ``name``'s namespace with address ``net`` on this node's bridge,
    its veth not yet on the bridge, if the bridge can carry it and no container here (``held``:
    name -> address) holds it; the client checked the whole cluster before."""
    here = bridge(bridge_name) if bridge_name else None
    node = NodeNet("this node", bridge_name, here.addresses if here else ())
    iface = check_claim(net, name, [node], held)
    check_carry(node, iface)
    identity = NetIdentity(home, name, iface, bridge_name)
    identity.create()
    return identity


def restore_into(
    criu: Criu, images: Path, identity: NetIdentity, extra: tuple[str, ...] = ()
) -> RestoreStats:
    """Restore ``images`` into a fresh namespace with the address, its veth not yet on
    the bridge (no packet reaches the connections until they are out of repair
    mode), the tree left stopped; then announce the address and continue it.
    ``extra``: more of ``criu restore``'s arguments (``--lazy-pages``).

    Stopped until the address is on the network: what the tree sends first (the
    answer to what it read before the dump) would be lost on a veth off the
    bridge, and a restored connection retransmits only after TCP's initial
    timeout, a second."""
    identity.create()
    identity.seed(images)
    catch = Catcher(identity.iface, identity.bridge)  # what the peers send meanwhile
    fd = identity.open()
    try:
        catch.start()
        stats = criu.restore(images, net_fd=fd, extra=(*extra, "--leave-stopped"))
        identity.announce()
    except BaseException:
        catch.stop()
        identity.remove()
        raise
    finally:
        os.close(fd)
    procs.signal_tree(stats.pid, signal.SIGCONT)
    catch.hand_in(identity.veth)
    return stats


def garp(path: Path, iface: IPv4Interface, count: int = 3) -> None:
    """Broadcast ``count`` gratuitous ARP requests for ``iface`` from inside the namespace."""
    errors: list[BaseException] = []
    thread = threading.Thread(target=_garp_inside, args=(path, iface, count, errors), daemon=True)
    thread.start()  # setns moves only the calling thread: a thread of its own, then gone
    thread.join(5)
    if errors:
        raise PermanentError(f"gratuitous ARP for {iface.ip} failed: {errors[0]}")


def _garp_inside(path: Path, iface: IPv4Interface, count: int, errors: list[BaseException]) -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            if libc.setns(fd, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
        finally:
            os.close(fd)
        frame = arp_announcement(iface)
        with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as sock:
            sock.bind((INSIDE, 0))
            for _ in range(count):
                sock.send(frame)
    except OSError as exc:
        errors.append(exc)


def _ip_json(*args: str) -> list[dict[str, Any]]:
    done = subprocess.run(["ip", "-j", *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return []
    with contextlib.suppress(ValueError):
        return list(json.loads(done.stdout or "[]"))
    return []


def _ip_json_in(path: Path, *args: str) -> list[dict[str, Any]]:
    cmd = ["nsenter", f"--net={path}", "ip", "-j", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    with contextlib.suppress(ValueError):
        return list(json.loads(done.stdout or "[]")) if done.returncode == 0 else []
    return []


def _is_ipv4(text: str) -> bool:
    try:
        ipaddress.IPv4Address(text)
    except ValueError:
        return False
    return True


def _ip(*args: str) -> None:
    _run("ip", *args)


def _run(*argv: str) -> None:
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise PermanentError(f"`{' '.join(argv)}` failed: {exc}") from exc
    if done.returncode != 0:
        raise PermanentError(f"`{' '.join(argv)}` failed: {done.stderr.strip()}")
