"""Bandwidth budgets for the data plane.

A :class:`TokenBucket` may be private to one transfer (its own limit) or
shared by every transfer leaving a process; an :class:`Uplink` is shared by
every transfer leaving a node, across its worker processes, frozen
containers' first. A transfer takes from each bucket it is given, so every
limit holds at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import mmap
import os
import struct
import threading
import time
from pathlib import Path
from typing import Protocol

from workers.errors import BadRequest

MIN_BURST = 64 * 1024
MAX_BURST = 4 * 1024 * 1024


class Budget(Protocol):
    """What a transfer takes its bytes from: a :class:`TokenBucket` or an :class:`Uplink`."""

    burst: int

    def take(self, n: int) -> None: ...


class TokenBucket:
    """A budget of ``rate_bps`` bytes per second that lets at most ``burst`` bytes through at once.

    ``burst`` defaults to 50 ms worth of bytes, clamped to [64 KiB, 4 MiB]: small
    enough that the rate holds over short transfers, big enough for few syscalls.
    Thread-safe; callers are served in the order they ask.
    """

    def __init__(self, rate_bps: float, burst: int | None = None) -> None:
        if not rate_bps > 0:
            raise BadRequest(f"bandwidth limit must be positive, not {rate_bps} bytes/s")
        if burst is None:
            burst = min(MAX_BURST, max(MIN_BURST, int(rate_bps / 20)))
        if burst < 1:
            raise BadRequest(f"burst must be at least 1 byte, not {burst}")
        self.rate_bps = float(rate_bps)
        self.burst = burst
        self._level = float(burst)
        self._stamp = time.monotonic()
        self._lock = threading.Lock()

    def take(self, n: int) -> None:
        """Block until ``n`` bytes may be sent."""
        with self._lock:
            now = time.monotonic()
            self._level = min(self.burst, self._level + (now - self._stamp) * self.rate_bps)
            self._stamp = now
            # Reserve now, wait outside the lock: later callers queue behind the debt.
            self._level -= n
            debt = -self._level
        if debt > 0:
            time.sleep(debt / self.rate_bps)


URGENT_HOLD_S = 0.05  # an urgent transfer's claim on the link outlasts its last chunk this long
YIELD_S = 0.002  # how often a yielding transfer looks whether the link is its again


class Uplink:
    """A node's send budget, shared by its worker processes through a small file.

    Every transfer that leaves the node takes from it. Those of the urgent
    slot (a frozen container's final bytes) come first: while one has sent in
    the last URGENT_HOLD_S, the others wait, so no freeze waits behind another
    container's passes. Same interface as :class:`TokenBucket` (``take``,
    ``burst``); one instance per process, ``urgent`` for the urgent slot's.
    """

    def __init__(self, path: Path, rate_bps: float, urgent: bool, burst: int | None = None) -> None:
        if not rate_bps > 0:
            raise BadRequest(f"uplink rate must be positive, not {rate_bps} bytes/s")
        self.rate_bps = float(rate_bps)
        self.burst = burst or min(MAX_BURST, max(MIN_BURST, int(rate_bps / 20)))
        self.urgent = urgent
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        if os.fstat(fd).st_size < _STATE.size:
            os.ftruncate(fd, _STATE.size)  # zeros: empty, stamped long ago, no urgent claim
        self._fd = fd
        self._map = mmap.mmap(fd, _STATE.size)
        self._lock = threading.Lock()  # flock does not keep this process's threads apart

    def take(self, n: int) -> None:
        """Block until ``n`` bytes may be sent (an urgent transfer's first)."""
        while True:
            with self._lock:
                fcntl.flock(self._fd, fcntl.LOCK_EX)
                try:
                    level, stamp, until = _STATE.unpack_from(self._map)
                    now = time.monotonic()
                    if not self.urgent and now < until:
                        wait = True
                    else:
                        wait = False
                        level = min(self.burst, level + (now - stamp) * self.rate_bps) - n
                        until = now + URGENT_HOLD_S if self.urgent else until
                        _STATE.pack_into(self._map, 0, level, now, until)
                finally:
                    fcntl.flock(self._fd, fcntl.LOCK_UN)
            if not wait:
                break
            time.sleep(YIELD_S)
        if level < 0:
            time.sleep(-level / self.rate_bps)


_STATE = struct.Struct("=ddd")  # tokens left, when counted (monotonic), urgent claim until


BEHIND = 10  # nice steps a tail's threads keep below their worker while the dump runs


def renice_thread(steps: int) -> None:
    """Move the calling thread ``steps`` nice steps (positive: behind the others). Coming
    back needs root, as a node runs; elsewhere the thread stays where it is."""
    me = threading.get_native_id()
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, me, os.getpriority(os.PRIO_PROCESS, me) + steps)
