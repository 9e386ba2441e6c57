"""Bandwidth budgets for the data plane.

A :class:`TokenBucket` may be private to one transfer (its own limit) or
shared by every transfer leaving a node (the node's limit); a transfer takes
from each bucket it is given, so both limits hold at once.
"""

from __future__ import annotations

import threading
import time

from workers.errors import BadRequest

MIN_BURST = 64 * 1024
MAX_BURST = 4 * 1024 * 1024


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
