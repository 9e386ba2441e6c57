"""userfaultfd write-protection in async mode, and the PAGEMAP_SCAN ioctl.

With ``UFFD_FEATURE_WP_ASYNC`` a write to a write-protected page does not
wait for a handler: the kernel unprotects the page and remembers it was
written. ``PAGEMAP_SCAN`` on ``/proc/PID/pagemap`` reports the pages written
(``PAGE_IS_WRITTEN``) and, with ``PM_SCAN_WP_MATCHING``, write-protects them
again in the same call. ``UFFD_FEATURE_WP_UNPOPULATED`` puts markers on
never-touched anonymous pages so their first write counts too (without it the
kernel refuses ``PM_SCAN_CHECK_WPASYNC`` on anonymous memory). Linux >= 6.7
(arm64: uffd-wp since 6.10). Structures from include/uapi/linux/{userfaultfd,fs}.h.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

UFFD_API = 0xAA
UFFD_FEATURE_WP_UNPOPULATED = 1 << 13
UFFD_FEATURE_WP_ASYNC = 1 << 15
FEATURES = UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED
UFFDIO_REGISTER_MODE_WP = 2

PAGE_IS_WPALLOWED = 1 << 0
PAGE_IS_WRITTEN = 1 << 1
PAGE_IS_FILE = 1 << 2
PAGE_IS_PRESENT = 1 << 3
PAGE_IS_SWAPPED = 1 << 4
PAGE_IS_PFNZERO = 1 << 5
PM_SCAN_WP_MATCHING = 1 << 0
PM_SCAN_CHECK_WPASYNC = 1 << 1


def _iowr(kind: int, nr: int, size: int) -> int:
    return 3 << 30 | size << 16 | kind << 8 | nr


class _Api(ctypes.Structure):
    _fields_ = (
        ("api", ctypes.c_uint64),
        ("features", ctypes.c_uint64),
        ("ioctls", ctypes.c_uint64),
    )


class _Register(ctypes.Structure):
    _fields_ = (
        ("start", ctypes.c_uint64),
        ("len", ctypes.c_uint64),
        ("mode", ctypes.c_uint64),
        ("ioctls", ctypes.c_uint64),
    )


class _Region(ctypes.Structure):
    _fields_ = (
        ("start", ctypes.c_uint64),
        ("end", ctypes.c_uint64),
        ("categories", ctypes.c_uint64),
    )


class _ScanArg(ctypes.Structure):
    _fields_ = tuple(
        (name, ctypes.c_uint64)
        for name in [
            "size",
            "flags",
            "start",
            "end",
            "walk_end",
            "vec",
            "vec_len",
            "max_pages",
            "category_inverted",
            "category_mask",
            "category_anyof_mask",
            "return_mask",
        ]
    )


UFFDIO_API = _iowr(0xAA, 0x3F, ctypes.sizeof(_Api))
UFFDIO_REGISTER = _iowr(0xAA, 0x00, ctypes.sizeof(_Register))
PAGEMAP_SCAN = _iowr(ord("f"), 16, ctypes.sizeof(_ScanArg))
_VEC = 4096  # regions per ioctl call


def enable(uffd: int) -> int:
    """The UFFDIO_API handshake asking for async write-protection; the features granted.

    OSError when the kernel lacks them (EINVAL).
    """
    api = _Api(UFFD_API, FEATURES, 0)
    fcntl.ioctl(uffd, UFFDIO_API, api)
    return int(api.features)


def register(uffd: int, start: int, end: int) -> None:
    """Register ``[start, end)`` for write-protection (OSError: EINVAL, EBUSY, EPERM)."""
    fcntl.ioctl(uffd, UFFDIO_REGISTER, _Register(start, end - start, UFFDIO_REGISTER_MODE_WP, 0))


@dataclass(frozen=True)
class Region:
    start: int
    end: int
    categories: int


def scan(
    pagemap: int,
    start: int,
    end: int,
    *,
    protect: bool,
    want: int = 0,
    returned: int = PAGE_IS_WRITTEN | PAGE_IS_PRESENT | PAGE_IS_SWAPPED,
) -> Iterator[Region]:
    """The regions of ``[start, end)`` with every category of ``want``, as runs of equal
    ``returned`` categories; ``protect`` write-protects them in the same call.

    Raises OSError EPERM (PM_SCAN_CHECK_WPASYNC) when part of the range is not
    registered for async write-protection: its writes were never tracked.
    """
    vec = (_Region * _VEC)()
    flags = PM_SCAN_CHECK_WPASYNC | (PM_SCAN_WP_MATCHING if protect else 0)
    while start < end:
        arg = _ScanArg(
            ctypes.sizeof(_ScanArg), flags, start, end, 0, ctypes.addressof(vec), _VEC, 0,
            0, want, 0, returned,
        )  # fmt: skip
        n = fcntl.ioctl(pagemap, PAGEMAP_SCAN, arg)
        for r in vec[:n]:
            yield Region(r.start, r.end, r.categories)
        start = arg.walk_end


@dataclass(frozen=True)
class Vma:
    start: int
    end: int
    perms: str
    name: str

    @property
    def trackable(self) -> bool:
        """Writable private memory: what a process can change without a new mapping.

        Read-only and PROT_NONE mappings (reservations can span gigabytes of page
        tables) are left out; pages CRIU dumps from them are sent at the final dump.
        """
        return self.perms[1] == "w" and self.perms[3] == "p" and self.name != "[vsyscall]"


def vmas(pid: int) -> list[Vma]:
    """``pid``'s mappings, from /proc/PID/maps."""
    out = []
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        parts = line.split(maxsplit=5)
        lo, hi = (int(x, 16) for x in parts[0].split("-"))
        out.append(Vma(lo, hi, parts[1], parts[5] if len(parts) > 5 else ""))
    return out


class _IoVec(ctypes.Structure):
    _fields_ = (("base", ctypes.c_void_p), ("len", ctypes.c_size_t))


_libc = ctypes.CDLL(None, use_errno=True)
_libc.process_vm_readv.restype = ctypes.c_ssize_t


def read(pid: int, addr: int, into: memoryview) -> int:
    """Copy ``len(into)`` bytes at ``addr`` in ``pid`` into ``into``; how many arrived."""
    buf = (ctypes.c_char * len(into)).from_buffer(into)
    local = _IoVec(ctypes.addressof(buf), len(into))
    remote = _IoVec(addr, len(into))
    n = _libc.process_vm_readv(pid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
    if n < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return int(n)
