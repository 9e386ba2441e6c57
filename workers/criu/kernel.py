"""What the node's kernel has, found by trying it where a try is cheap and safe,
else by reading its config (/proc/config.gz, /boot/config-$(uname -r)).

Each check returns a :class:`Check`: whether the piece is there and how the
probe knows. The tries: ``/proc/sys/kernel/ns_last_pid`` exists only with
CHECKPOINT_RESTORE; ``/proc/self/ns/*`` lists the namespace types the kernel
has; a ``userfaultfd(2)`` plus its UFFDIO_API handshake says whether lazy
pages can work and whether write-protection is offered; a PAGEMAP_SCAN
ioctl on ``/proc/self/pagemap`` answers ENOTTY only on kernels without it;
a freshly written page is soft-dirty in ``/proc/self/pagemap`` (bit 55) only
where the kernel tracks soft-dirty; sock diag is one NETLINK_SOCK_DIAG dump
per family (workers.criu.sockdiag).
"""

from __future__ import annotations

import ctypes
import errno
import gzip
import mmap
import os
import platform
import struct
from dataclasses import dataclass
from pathlib import Path

from workers.criu.sockdiag import FAMILIES, sock_diag
from workers.records import Need
from workers.tracker import probe as tracker_probe

# userfaultfd(2) by architecture: the userland's own syscall table
SYS_USERFAULTFD = {"x86_64": 323, "aarch64": 282, "armv7l": 388, "armv6l": 388, "i686": 374}
UFFD_USER_MODE_ONLY = 1  # lets an unprivileged process in when vm.unprivileged_userfaultfd=0
UFFD_API = 0xAA
UFFDIO_API = 0xC018AA3F  # _IOWR(0xAA, 0x3F, struct uffdio_api): 24 bytes
UFFD_FEATURE_PAGEFAULT_FLAG_WP = 1 << 0
UFFD_FEATURE_WP_ASYNC = 1 << 15  # what a PAGEMAP_SCAN dirty tracker needs (Linux 6.7)
PAGEMAP_SCAN = 0xC0606610  # _IOWR('f', 16, struct pm_scan_arg): 96 bytes
PM_SOFT_DIRTY = 1 << 55
CLEAR_SOFT_DIRTY = b"4"  # /proc/PID/clear_refs
NAMESPACES = ("pid", "uts", "ipc", "mnt", "net")  # what a ferry container unshares
DIAG_NEEDS = (Need.UNIX_DIAG, Need.INET_DIAG, Need.PACKET_DIAG, Need.NETLINK_DIAG)  # FAMILIES
CONFIG_PATHS = (Path("/proc/config.gz"), Path("/boot") / f"config-{platform.release()}")
OPTIONS = (
    "CHECKPOINT_RESTORE",
    "NAMESPACES",
    "PID_NS",
    "USERFAULTFD",
    "PTE_MARKER_UFFD_WP",
    "MEM_SOFT_DIRTY",
    "UNIX_DIAG",
    "INET_DIAG",
    "PACKET_DIAG",
    "NETLINK_DIAG",
    "ARM64_16K_PAGES",
)


@dataclass(frozen=True)
class Check:
    """One requirement as probed: there or not, and how the probe knows."""

    ok: bool
    how: str


def kernel_config(paths: tuple[Path, ...] = CONFIG_PATHS) -> dict[str, str] | None:
    """The options ferry cares about (``y``, ``m``, or ``n`` when not set), or None if
    the kernel's config is nowhere to read."""
    for path in paths:
        try:
            raw = path.read_bytes()
        except OSError:
            continue
        text = (gzip.decompress(raw) if path.suffix == ".gz" else raw).decode(errors="replace")
        return parse_config(text)
    return None


def parse_config(text: str) -> dict[str, str]:
    """``CONFIG_X=y`` / ``# CONFIG_X is not set`` lines, for :data:`OPTIONS` only.

    An option the file does not name is not set (``n``).

    >>> c = parse_config("CONFIG_USERFAULTFD=y\\n# CONFIG_UNIX_DIAG is not set\\nCONFIG_PID_NS=m")
    >>> c["USERFAULTFD"], c["UNIX_DIAG"], c["PID_NS"], c["MEM_SOFT_DIRTY"]
    ('y', 'n', 'm', 'n')
    """
    found: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("CONFIG_"):
            key, _, value = line[len("CONFIG_") :].partition("=")
        elif line.startswith("# CONFIG_") and line.endswith(" is not set"):
            key, value = line[len("# CONFIG_") : -len(" is not set")], "n"
        else:
            continue
        if key in OPTIONS:
            found[key] = value
    return {k: found.get(k, "n") for k in OPTIONS}


def sysctl(name: str) -> int | None:
    """An integer sysctl (``fs.pipe-max-size``), or None where it does not exist."""
    try:
        return int(Path("/proc/sys", *name.split(".")).read_text())
    except (OSError, ValueError):
        return None


def checkpoint_restore() -> Check:
    if Path("/proc/sys/kernel/ns_last_pid").exists():
        return Check(True, "kernel.ns_last_pid exists")
    return Check(False, "no kernel.ns_last_pid: the kernel lacks CONFIG_CHECKPOINT_RESTORE")


def namespaces() -> Check:
    missing = [ns for ns in NAMESPACES if not Path("/proc/self/ns", ns).exists()]
    if missing:
        return Check(False, f"no {', '.join(missing)} namespace (/proc/self/ns)")
    return Check(True, f"{', '.join(NAMESPACES)} in /proc/self/ns")


def userland_bits() -> int:
    """The word size of this userland (a 32-bit Pi OS on a 64-bit kernel says 32)."""
    return struct.calcsize("P") * 8


def userland_arch() -> str:
    """The architecture this userland's binaries are built for."""
    machine = platform.machine()
    if userland_bits() == 32:
        return {"aarch64": "armv7l", "x86_64": "i686"}.get(machine, machine)
    return machine


def _userfaultfd_features() -> tuple[int | None, str]:
    """UFFDIO_API's feature mask, or None and why userfaultfd cannot be opened."""
    nr = SYS_USERFAULTFD.get(userland_arch())
    if nr is None:
        return None, f"userfaultfd not probed on {userland_arch()}"
    libc = ctypes.CDLL(None, use_errno=True)
    fd = -1
    for flags in (os.O_CLOEXEC | os.O_NONBLOCK, os.O_CLOEXEC | os.O_NONBLOCK | UFFD_USER_MODE_ONLY):
        fd = libc.syscall(nr, flags)
        if fd >= 0 or ctypes.get_errno() != errno.EPERM:
            break
    if fd < 0:
        code = ctypes.get_errno()
        if code == errno.ENOSYS:
            return None, "userfaultfd(2) is ENOSYS: the kernel lacks CONFIG_USERFAULTFD"
        return None, f"userfaultfd(2) failed: {os.strerror(code)}"
    try:
        api = (ctypes.c_uint64 * 3)(UFFD_API, 0, 0)
        if libc.ioctl(fd, UFFDIO_API, api) != 0:
            return None, f"UFFDIO_API failed: {os.strerror(ctypes.get_errno())}"
        return int(api[1]), "userfaultfd(2) and UFFDIO_API work"
    finally:
        os.close(fd)


def userfaultfd() -> tuple[Check, Check]:
    """(userfaultfd itself, write-protect tracking: UFFD WP_ASYNC + PAGEMAP_SCAN)."""
    features, how = _userfaultfd_features()
    uffd = Check(features is not None, how)
    if features is None:
        return uffd, Check(False, "no userfaultfd")
    if not (features & UFFD_FEATURE_PAGEFAULT_FLAG_WP and features & UFFD_FEATURE_WP_ASYNC):
        return uffd, Check(False, "userfaultfd offers no async write-protect (Linux >= 6.7)")
    scan = pagemap_scan()
    if not scan.ok:
        return uffd, scan
    return uffd, Check(*tracker_probe.round_trip())


def pagemap_scan() -> Check:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open("/proc/self/pagemap", os.O_RDONLY)
    try:
        arg = (ctypes.c_uint64 * 12)(96)  # size; an empty range, nothing asked
        if libc.ioctl(fd, PAGEMAP_SCAN, arg) != 0 and ctypes.get_errno() == errno.ENOTTY:
            return Check(False, "no PAGEMAP_SCAN ioctl on /proc/self/pagemap (Linux >= 6.7)")
        return Check(True, "PAGEMAP_SCAN answers on /proc/self/pagemap")
    finally:
        os.close(fd)


def soft_dirty() -> Check:
    """Whether a page written after clear_refs shows up soft-dirty in our own pagemap."""
    page = mmap.PAGESIZE
    buf = mmap.mmap(-1, page)
    try:
        Path("/proc/self/clear_refs").write_bytes(CLEAR_SOFT_DIRTY)
        buf[0] = 1
        ref = ctypes.c_char.from_buffer(buf)
        addr = ctypes.addressof(ref)
        del ref  # the mmap cannot close while ctypes holds its buffer
        with open("/proc/self/pagemap", "rb") as f:
            f.seek(addr // page * 8)
            (entry,) = struct.unpack("<Q", f.read(8))
    except OSError as exc:
        return Check(False, f"cannot read the pagemap: {exc}")
    finally:
        buf.close()
    if entry & PM_SOFT_DIRTY:
        return Check(True, "a written page is soft-dirty in /proc/self/pagemap")
    return Check(False, "a written page is not soft-dirty: the kernel lacks CONFIG_MEM_SOFT_DIRTY")


def cgroup_version(mounts: str | None = None) -> str:
    """``2`` (unified), ``hybrid`` (v1 controllers and a v2 tree) or ``1``, from the mounts."""
    if mounts is None:
        try:
            mounts = Path("/proc/self/mounts").read_text()
        except OSError:
            return "?"
    kinds = {(f[1], f[2]) for f in (line.split() for line in mounts.splitlines()) if len(f) > 2}
    if ("/sys/fs/cgroup", "cgroup2") in kinds:
        return "2"
    v1 = any(t == "cgroup" for _, t in kinds)
    v2 = any(t == "cgroup2" for _, t in kinds)
    return "hybrid" if v1 and v2 else "1" if v1 else "?"


def checks(pipe_needed: int) -> dict[Need, Check]:
    """Every requirement, probed on this node."""
    uffd, wp = userfaultfd()
    pipe = sysctl("fs.pipe-max-size") or 0
    found: dict[Need, Check] = {
        Need.CHECKPOINT_RESTORE: checkpoint_restore(),
        Need.NAMESPACES: namespaces(),
        Need.USERFAULTFD: uffd,
        Need.UFFD_WP: wp,
        Need.SOFT_DIRTY: soft_dirty(),
        Need.PIPE_MAX_SIZE: Check(pipe >= pipe_needed, f"fs.pipe-max-size is {pipe}"),
    }
    for family, need in zip(FAMILIES, DIAG_NEEDS, strict=True):
        ok, how = sock_diag(family)
        found[need] = Check(ok, how)
    return found
