"""Whether the uffd-wp tracker works on this node, found by really doing it.

Two tries: on a few pages of this process (a userfaultfd with async
write-protection registered over them, all protected, one written: the scan
must report exactly that page), and on a short-lived child, whose
``userfaultfd(2)`` is injected by ptrace as a migration's would be.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import subprocess
import time

from workers import procs
from workers.errors import FerryError
from workers.tracker import inject, uffd

_PAGES = 4


def round_trip() -> tuple[bool, str]:
    """(works, how the probe knows or why not)."""
    try:
        a = inject.arch()
    except FerryError as exc:
        return False, str(exc)
    ok, why = _own_pages(a)
    if not ok:
        return ok, why
    return _child()


def _own_pages(a: inject.Arch) -> tuple[bool, str]:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.syscall(a.userfaultfd, inject.O_CLOEXEC | inject.UFFD_USER_MODE_ONLY)
    if fd < 0:
        return False, f"userfaultfd(2): {os.strerror(ctypes.get_errno())}"
    page = mmap.PAGESIZE
    buf = mmap.mmap(-1, _PAGES * page, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    ref = ctypes.c_char.from_buffer(buf)
    lo = ctypes.addressof(ref)
    del ref  # the mmap cannot close while ctypes holds its buffer
    pagemap = os.open("/proc/self/pagemap", os.O_RDONLY | os.O_CLOEXEC)
    try:
        buf[0] = 1  # one page present, the others never touched
        uffd.enable(fd)
        uffd.register(fd, lo, lo + _PAGES * page)
        list(uffd.scan(pagemap, lo, lo + _PAGES * page, protect=True))
        buf[2 * page] = 1
        found = [
            (r.start, r.end)
            for r in uffd.scan(
                pagemap, lo, lo + _PAGES * page, protect=True, want=uffd.PAGE_IS_WRITTEN
            )
        ]
    except OSError as exc:
        return False, f"async write-protect on our own pages failed: {exc.strerror} (Linux >= 6.7)"
    finally:
        os.close(pagemap)
        os.close(fd)
        buf.close()
    if found != [(lo + 2 * page, lo + 3 * page)]:
        return False, f"PAGEMAP_SCAN reported {len(found)} written runs for one written page"
    return True, "a page written under async uffd write-protect was the one PAGEMAP_SCAN reported"


def _child() -> tuple[bool, str]:
    child = subprocess.Popen(["sleep", "30"])
    try:
        for _ in range(400):  # inject once it sleeps, as into a container's process: its
            # comm is "sleep" a moment before its exec has mapped the vDSO (1 probe in 30)
            if procs.comm(child.pid) == "sleep" and procs.state(child.pid) == "S":
                break
            time.sleep(0.005)
        fd = inject.userfaultfd_of(child.pid)
        try:
            uffd.enable(fd)
        finally:
            os.close(fd)
    except (FerryError, OSError) as exc:
        return False, f"injecting userfaultfd(2) into a process failed: {exc}"
    finally:
        procs.kill_and_wait(child.pid, 2)
        child.wait()
    return True, (
        "a page written under async uffd write-protect was the one PAGEMAP_SCAN reported; "
        "userfaultfd(2) injected into a child by ptrace"
    )
