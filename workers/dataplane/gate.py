"""Who may hold a data-plane connection: the listener's defence against slowloris.

A connection is *pending* from accept until it presents a valid token, then
*authenticated*. The two live in separate pools, so connections without a
token can never take the slots of real transfers:

- ``max_pending`` pending connections at most, ``per_peer`` of them from one
  address. A new connection always gets in: when its peer's share or the pool
  is full, the oldest pending connection (of that peer, else of any peer) is
  cut to make room. A real sender presents its token within a round trip of
  connecting, so an attacker would have to open a whole pool's worth of
  connections in that time to push it out.
- ``deadline_s`` from accept to a valid token, whatever trickles in
  meanwhile: :meth:`Gate.sweep` cuts the connections that overstayed.
- ``max_sessions`` authenticated connections; one more is told to retry.

What it cuts and refuses it counts by reason (:meth:`Gate.counts`, read by the
node's heartbeat and ``ferry metrics``) and logs at most once per
``log_every_s`` per reason.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
from collections import Counter
from dataclasses import dataclass

log = logging.getLogger(__name__)

REASONS = ("deadline", "peer_full", "pending_full", "busy", "refused")


@dataclass(frozen=True)
class GateLimits:
    """The listener's limits; the defaults suit a node serving a few migrations at once."""

    max_sessions: int = 64  # authenticated transfers at once
    max_pending: int = 32  # connections still without a valid token
    per_peer: int = 8  # pending connections from one address
    deadline_s: float = 3.0  # accept to a valid token, not reset by bytes
    log_every_s: float = 10.0


@dataclass
class _Pending:
    conn: socket.socket
    peer: str
    since: float


class Gate:
    """Tracks every open connection of one listener; thread-safe."""

    def __init__(self, limits: GateLimits) -> None:
        self.limits = limits
        self._lock = threading.Lock()
        self._pending: dict[int, _Pending] = {}  # id(conn), in accept order
        self._authed: set[int] = set()
        self._cut: set[int] = set()  # cut by the gate: its session ends quietly
        self._counts: Counter[str] = Counter()
        self._logged: dict[str, tuple[float, int]] = {}  # reason -> (last log, count then)

    def enter(self, conn: socket.socket, peer: str, now: float) -> None:
        """Admit a just-accepted connection as pending, cutting an older one if full."""
        with self._lock:
            mine = [k for k, p in self._pending.items() if p.peer == peer]
            victim: tuple[int, str] | None = None
            if len(mine) >= self.limits.per_peer:
                victim = (mine[0], "peer_full")
            elif len(self._pending) >= self.limits.max_pending:
                victim = (next(iter(self._pending)), "pending_full")
            if victim is not None:
                self._cut_locked(victim[0], victim[1], now)
            self._pending[id(conn)] = _Pending(conn, peer, now)

    def authenticate(self, conn: socket.socket, now: float) -> bool:
        """Move ``conn`` to the authenticated pool; False if it was cut or that pool is full."""
        with self._lock:
            key = id(conn)
            if key not in self._pending:
                return False
            if len(self._authed) >= self.limits.max_sessions:
                self._count_locked("busy", now)
                return False
            del self._pending[key]
            self._authed.add(key)
            return True

    def leave(self, conn: socket.socket) -> bool:
        """Forget ``conn`` (its session ended); True if the gate had cut it."""
        with self._lock:
            key = id(conn)
            self._pending.pop(key, None)
            self._authed.discard(key)
            if key in self._cut:
                self._cut.discard(key)
                return True
            return False

    def is_cut(self, conn: socket.socket) -> bool:
        """Whether the gate cut ``conn`` (it has been counted and logged already)."""
        with self._lock:
            return id(conn) in self._cut

    def refused(self, now: float, why: str, reason: str = "refused") -> None:
        """Count (and log, rate-limited) a connection refused before it had a valid token."""
        with self._lock:
            self._count_locked(reason, now, why)

    def sweep(self, now: float) -> int:
        """Cut the pending connections past their deadline; how many were cut."""
        with self._lock:
            late = [k for k, p in self._pending.items() if now - p.since >= self.limits.deadline_s]
            for key in late:
                self._cut_locked(key, "deadline", now)
            return len(late)

    def counts(self) -> dict[str, int]:
        """Connections cut or refused so far, by reason (every reason, zeros included)."""
        with self._lock:
            return {r: self._counts[r] for r in REASONS}

    def pending(self) -> int:
        with self._lock:
            return len(self._pending)

    def _cut_locked(self, key: int, reason: str, now: float) -> None:
        entry = self._pending.pop(key)
        self._cut.add(key)
        with contextlib.suppress(OSError):  # wakes the session thread blocked in recv
            entry.conn.shutdown(socket.SHUT_RDWR)
        self._count_locked(reason, now, f"from {entry.peer}")

    def _count_locked(self, reason: str, now: float, detail: str = "") -> None:
        self._counts[reason] += 1
        last, seen = self._logged.get(reason, (float("-inf"), 0))
        if now - last >= self.limits.log_every_s:
            more = self._counts[reason] - seen - 1
            log.warning(
                "data plane: connection cut or refused (%s) %s%s",
                reason,
                detail,
                f"; {more} more since the last such line" if more > 0 else "",
            )
            self._logged[reason] = (now, self._counts[reason])
