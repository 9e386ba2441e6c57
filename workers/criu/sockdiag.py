"""Whether the kernel answers sock diag for a socket family, the way CRIU asks.

CRIU dumps a process's sockets from NETLINK_SOCK_DIAG; a kernel built without
that family's diag module (UNIX_DIAG, INET_DIAG, PACKET_DIAG, NETLINK_DIAG)
makes every dump of such a socket fail ("The sock diag infrastructure is
incomplete"). One dump request per family, filtered to (nearly) nothing,
says whether the kernel has it: ENOENT means it has not (a module it could
load would have been loaded for the request).
"""

from __future__ import annotations

import errno
import os
import socket
import struct

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
NLMSG_ERROR, NLMSG_DONE = 2, 3
IPPROTO_TCP = 6
FAMILIES = ("unix", "inet", "packet", "netlink")
OPTION = {
    "unix": "UNIX_DIAG",
    "inet": "INET_DIAG",
    "packet": "PACKET_DIAG",
    "netlink": "NETLINK_DIAG",
}
TIMEOUT_S = 2.0


def request(family: str) -> bytes:
    """The SOCK_DIAG_BY_FAMILY dump request for ``family``, as CRIU would send it."""
    if family == "unix":  # unix_diag_req; states 0: match no socket, only ask
        body = struct.pack("<BBHIII2I", socket.AF_UNIX, 0, 0, 0, 0, 0, 0, 0)
    elif family == "inet":  # inet_diag_req_v2 for TCP; states 0, an empty socket id
        body = struct.pack("<BBBBI", socket.AF_INET, IPPROTO_TCP, 0, 0, 0) + bytes(48)
    elif family == "packet":  # packet_diag_req
        body = struct.pack("<BBHII2I", socket.AF_PACKET, 0, 0, 0, 0, 0, 0)
    elif family == "netlink":  # netlink_diag_req: only the sock-diag protocol's sockets
        body = struct.pack("<BBHII2I", socket.AF_NETLINK, NETLINK_SOCK_DIAG, 0, 0, 0, 0, 0)
    else:
        raise ValueError(f"unknown socket family {family!r}")
    header = struct.pack(
        "<IHHII", 16 + len(body), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, 1, 0
    )
    return header + body


def answer(data: bytes) -> int | None:
    """The dump's outcome in one reply buffer: 0 done, -errno failed, None not yet."""
    off = 0
    while off + 16 <= len(data):
        length, kind = struct.unpack_from("<IH", data, off)
        if kind == NLMSG_DONE:
            return 0
        if kind == NLMSG_ERROR:
            (code,) = struct.unpack_from("<i", data, off + 16)
            if code:
                return int(code)
        off += max((length + 3) & ~3, 16)
    return None


def sock_diag(family: str) -> tuple[bool, str]:
    """Whether the kernel dumps ``family`` sockets over NETLINK_SOCK_DIAG, and how we know."""
    try:
        with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_SOCK_DIAG) as s:
            s.settimeout(TIMEOUT_S)
            s.send(request(family))
            while True:
                code = answer(s.recv(1 << 16))
                if code is not None:
                    break
    except OSError as exc:
        return False, f"{family} sock diag not probed: {exc}"
    if code == 0:
        return True, f"{family} sock diag answers"
    if -code == errno.ENOENT:
        return False, f"no {family} sock diag: the kernel lacks CONFIG_{OPTION[family]}"
    return False, f"{family} sock diag failed: {os.strerror(-code)}"
