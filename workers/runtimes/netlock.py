"""Undo the network lock a post-copy dump leaves on a container that stays where it is.

CRIU decides whether to unlock the network before a lazy dump serves its pages
(cr_dump_finish in criu/cr-dump.c unlocks on a failed or leave-running dump,
then serves the pages). A lazy dump that ends without its destination (the
page transfer fails, or the peer hangs up, which CRIU takes for the end)
leaves every established connection in TCP repair mode and CRIU's chain
dropping the namespace's traffic, the tree stopped or, after a failure,
resumed: a recv() on such a socket fails with EPERM at once, and most
servers close the connection on that.

So while CRIU still holds the tree, the runtime queues a SIGSTOP on each of its
processes (:func:`hold`): CRIU's detach lets them run, and the signal stops them
before any of their code does. Then :func:`release` takes each connection out of
repair mode (the socket fetched with pidfd_getfd, TCP_REPAIR off; the kernel
sends the peer a window probe) and removes CRIU's rules from the namespace,
and the runtime puts the address back and continues the tree.

Only sockets in repair mode are touched: leaving repair resets SO_REUSEADDR,
which an established connection's socket has no use for.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
from collections.abc import Iterable
from pathlib import Path

from workers import procs

SYS_PIDFD_GETFD = 438  # one number on every architecture (the unified syscall table)
TCP_REPAIR = 19  # linux/tcp.h
TCP_REPAIR_OFF = 0
LOCK_CHAIN = "CRIU"  # what criu's iptables lock adds to INPUT and OUTPUT
LOCK_TABLE = "CRIU-"  # and its nftables lock's table name starts with


def hold(pid: int) -> None:
    """Queue a SIGSTOP on every process of ``pid``'s tree (held by CRIU: it takes effect
    when CRIU lets them go)."""
    procs.signal_tree(pid, signal.SIGSTOP)


def release(pids: Iterable[int], netns: Path) -> int:
    """Take the TCP connections of ``pids`` out of repair mode and drop CRIU's lock
    from the namespace at ``netns``; how many connections were released."""
    released = sum(_release_sockets(pid) for pid in pids)
    _drop_lock(netns)
    return released


def _release_sockets(pid: int) -> int:
    try:
        pidfd = os.pidfd_open(pid)
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return 0  # gone meanwhile
    released = 0
    try:
        for fd in fds:
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:"):
                    released += _repair_off(_getfd(pidfd, int(fd)))
    finally:
        os.close(pidfd)
    return released


def _getfd(pidfd: int, fd: int) -> int:
    """A duplicate, in this process, of the process's open file ``fd``."""
    libc = ctypes.CDLL(None, use_errno=True)
    mine = int(libc.syscall(SYS_PIDFD_GETFD, pidfd, fd, 0))
    if mine < 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    return mine


def _repair_off(fd: int) -> int:
    with socket.socket(fileno=fd) as sock:  # closing it closes only this duplicate
        tcp = sock.type == socket.SOCK_STREAM and sock.family in (socket.AF_INET, socket.AF_INET6)
        if not tcp or not sock.getsockopt(socket.IPPROTO_TCP, TCP_REPAIR):
            return 0
        sock.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR, TCP_REPAIR_OFF)
        return 1


def _drop_lock(netns: Path) -> None:
    """Remove CRIU's network lock inside the namespace: its iptables chain (CRIU's
    default) and any table of its nftables lock. Absent rules are no error."""
    inside = ["nsenter", f"--net={netns}"]
    for tool in ("iptables", "ip6tables"):
        for args in (
            ["-D", "INPUT", "-j", LOCK_CHAIN],
            ["-D", "OUTPUT", "-j", LOCK_CHAIN],
            ["-F", LOCK_CHAIN],
            ["-X", LOCK_CHAIN],
        ):
            _quiet([*inside, tool, "-w", *args])
    tables = _quiet([*inside, "nft", "list", "tables"])
    for line in tables.splitlines():
        words = line.split()  # "table inet CRIU-<run id>"
        if len(words) == 3 and words[0] == "table" and words[2].startswith(LOCK_TABLE):
            _quiet([*inside, "nft", "delete", "table", words[1], words[2]])


def _quiet(argv: list[str]) -> str:
    """Run ``argv`` (no shell); its output, "" if it failed or is not installed."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout if done.returncode == 0 else ""
