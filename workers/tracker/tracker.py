"""The uffd-wp dirty tracker of one process tree: each pass sends only what was written.

For every process of the tree it holds a userfaultfd bound to that process's
memory (workers.tracker.inject) with every writable private mapping
registered for async write-protection. A pass, with the tree running:

- a process seen for the first time, or a mapping that appeared (mmap, brk,
  mremap, a split), is registered, write-protected and read whole;
- a registered mapping is scanned: PAGEMAP_SCAN returns the pages written
  since the last pass and write-protects them again in the same call, and
  only those are read (``process_vm_readv``).

A page read after it was write-protected and not reported written since still
holds what was read: that is the *clean* set, per process, which the final
dump need not send. A write between the scan and the read marks the page
again, so the next pass sends it again. Mappings that vanished, processes
that exited and anything the kernel refuses to track leave the clean set.

What a pass read goes into a pages pack (workers.tracker.pack).
"""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from workers import procs
from workers.errors import CapabilityError
from workers.tracker import inject, uffd
from workers.tracker.pack import PackWriter

_CHUNK = 1 << 20  # read at most this much of a process at once


@dataclass
class _Process:
    pid: int
    vpid: int  # the pid inside the container's pid namespace: CRIU's image names
    ticks: int | None
    fd: int  # the userfaultfd
    pagemap: int
    registered: list[tuple[int, int]] = field(default_factory=list)
    clean: set[int] = field(default_factory=set)  # page addresses

    def close(self) -> None:
        for fd in (self.fd, self.pagemap):
            os.close(fd)


@dataclass(frozen=True)
class PassStats:
    pages_scanned: int  # pages of the tracked mappings
    pages_written: int  # pages read and packed this pass
    processes: int
    new_processes: int
    new_ranges: int  # mappings registered this pass
    scan_ms: float  # PAGEMAP_SCAN and registration
    read_ms: float  # process_vm_readv and writing the pack
    tracked_bytes: int


def uses_userfaultfd(pid: int) -> bool:
    """True if ``pid`` holds a userfaultfd of its own (then it cannot be tracked)."""
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") == "anon_inode:[userfaultfd]":
                return True
        except OSError:
            continue
    return False


def _vpid(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("NSpid:"):
            return int(line.split()[-1])
    return pid


class Tracker:
    """Dirty-page tracking of the tree under ``root``; ``close`` ends it."""

    def __init__(self, root: int, page_size: int | None = None) -> None:
        self.root = root
        self.page = page_size or os.sysconf("SC_PAGE_SIZE")
        self.procs: dict[int, _Process] = {}

    def close(self) -> None:
        """Drop every userfaultfd: the tree's mappings are unregistered with the last one."""
        for p in self.procs.values():
            p.close()
        self.procs.clear()

    def forget(self) -> None:
        """Count nothing as sent: a pack that failed half-way never reaches the destination."""
        for p in self.procs.values():
            p.clean.clear()

    def _attach(self, pid: int) -> _Process:
        if uses_userfaultfd(pid):
            raise CapabilityError(
                f"process {pid} uses userfaultfd itself: the uffd-wp tracker cannot follow it"
            )
        fd = inject.userfaultfd_of(pid)
        try:
            uffd.enable(fd)
            pagemap = os.open(f"/proc/{pid}/pagemap", os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            os.close(fd)
            raise CapabilityError(
                f"no async write-protection for process {pid}: {exc.strerror} "
                "(UFFD_FEATURE_WP_ASYNC needs Linux >= 6.7, arm64 >= 6.10)"
            ) from exc
        return _Process(pid, _vpid(pid), procs.start_ticks(pid), fd, pagemap)

    def scan(self, pack: PackWriter) -> PassStats:
        """One pass over the running tree: what was written since the last, into ``pack``."""
        t0 = time.monotonic()
        scan_s = 0.0
        written = scanned = new = ranges = tracked = 0
        alive = procs.tree(self.root)
        for pid in list(self.procs):
            p = self.procs[pid]
            if pid not in alive or not procs.alive(pid, p.ticks):
                p.close()
                del self.procs[pid]
        for pid in alive:
            if pid not in self.procs:
                try:
                    self.procs[pid] = self._attach(pid)
                except (ProcessLookupError, FileNotFoundError):
                    continue  # it exited meanwhile
                new += 1
            p = self.procs[pid]
            s0 = time.monotonic()
            try:
                dirty, fresh, n, span = self._dirty(p)
            except (ProcessLookupError, FileNotFoundError):
                continue
            scan_s += time.monotonic() - s0
            ranges += fresh
            scanned += n
            tracked += span
            written += self._read(p, dirty, pack)
        total_s = time.monotonic() - t0
        return PassStats(
            pages_scanned=scanned,
            pages_written=written,
            processes=len(self.procs),
            new_processes=new,
            new_ranges=ranges,
            scan_ms=round(scan_s * 1000, 3),
            read_ms=round((total_s - scan_s) * 1000, 3),
            tracked_bytes=tracked,
        )

    def _dirty(self, p: _Process) -> tuple[list[tuple[int, int]], int, int, int]:
        """The runs of ``p``'s pages to read now (written, or in a new mapping), write-protected
        again; with the count of mappings registered and of pages and bytes tracked."""
        runs: list[tuple[int, int]] = []
        fresh = pages = span = 0
        old = p.registered
        now: list[tuple[int, int]] = []
        for v in uffd.vmas(p.pid):
            if not v.trackable:
                continue
            known = [(max(a, v.start), min(b, v.end)) for a, b in old if a < v.end and b > v.start]
            try:
                for lo, hi in known:
                    runs += _runs(
                        uffd.scan(p.pagemap, lo, hi, protect=True, want=uffd.PAGE_IS_WRITTEN)
                    )
                gaps = _gaps(v.start, v.end, known)
            except OSError as exc:
                if exc.errno != errno.EPERM:
                    raise
                gaps = [(v.start, v.end)]  # no longer registered (mapped anew): start over
            for lo, hi in gaps:
                try:
                    uffd.register(p.fd, lo, hi)
                except OSError:
                    continue  # not trackable (EINVAL, EPERM): its pages go at the final dump
                fresh += 1
                for r in uffd.scan(p.pagemap, lo, hi, protect=True):
                    if r.categories & (uffd.PAGE_IS_PRESENT | uffd.PAGE_IS_SWAPPED):
                        runs.append((r.start, r.end))
            now += [(v.start, v.end)] if gaps or known else []
            pages += (v.end - v.start) // self.page
            span += v.end - v.start
        p.registered = _merge(now)
        for a, b in old:  # what is no longer mapped (or no longer tracked) is not clean
            for lo, hi in _gaps(a, b, [(x, y) for x, y in p.registered if x < b and y > a]):
                p.clean.difference_update(range(lo, hi, self.page))
        runs = _merge(runs)  # adjacent runs read (and packed) as one
        for lo, hi in runs:
            p.clean.difference_update(range(lo, hi, self.page))
        return runs, fresh, pages, span

    def _read(self, p: _Process, runs: list[tuple[int, int]], pack: PackWriter) -> int:
        """Read ``runs`` from ``p`` into ``pack``; the pages read (now clean)."""
        buf = bytearray(_CHUNK)
        done = 0
        for lo, hi in runs:
            for at in range(lo, hi, _CHUNK):
                size = min(_CHUNK, hi - at)
                try:
                    n = uffd.read(p.pid, at, memoryview(buf)[:size])
                except OSError:
                    n = 0  # unmapped meanwhile: nothing of it is clean
                n -= n % self.page
                if n:
                    pack.add(p.vpid, at, memoryview(buf)[:n])
                    p.clean.update(range(at, at + n, self.page))
                    done += n // self.page
                if n < size:
                    break
        return done

    def finish(self) -> dict[int, set[int]]:
        """With the tree stopped (after the final dump): the pages sent that still hold what
        was sent, per container pid. Ends the tracking."""
        out: dict[int, set[int]] = {}
        for p in self.procs.values():
            try:
                dirty, _, _, _ = self._dirty(p)
            except (ProcessLookupError, FileNotFoundError):
                continue
            for lo, hi in dirty:
                p.clean.difference_update(range(lo, hi, self.page))
            out[p.vpid] = set(p.clean)
        self.close()
        return out


def _runs(regions: Iterable[uffd.Region]) -> list[tuple[int, int]]:
    return [(r.start, r.end) for r in regions]


def _gaps(lo: int, hi: int, covered: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The parts of ``[lo, hi)`` outside the sorted, disjoint ``covered``."""
    out, at = [], lo
    for a, b in sorted(covered):
        if a > at:
            out.append((at, a))
        at = max(at, b)
    if at < hi:
        out.append((at, hi))
    return out


def _merge(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """``ranges`` sorted, with those that touch or overlap joined."""
    out: list[tuple[int, int]] = []
    for a, b in sorted(ranges):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out
