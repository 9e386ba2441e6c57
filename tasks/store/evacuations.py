"""Evacuation records in ferry's Redis: the records, cancel flags and locks.

A record's ``moves`` map each container of the drained node to its
destination and outcome: ``pending``, ``running`` (its migration id is set),
then one of OUTCOMES for good.

Keys::

    ferry:evac:<id>            JSON record: node, plan, limits, moves (outcome, migration), report
    ferry:evac:<id>:cancel     present once a cancel was asked for
    ferry:evac:<id>:tick       held by the one tick that runs (a tick may be redelivered)
    ferry:evac:<id>:again      a tick came while another ran: that one runs again
    ferry:evac:<id>:queued     a tick is queued (SET NX): no need to queue another
    ferry:evac:node:<node>     the evacuation draining <node> (SET NX; refreshed by each tick)
"""

from __future__ import annotations

import json
from typing import Any

import redis

from workers.errors import BadRequest
from workers.ids import check_evac_id

LOCK_TTL_S = 600  # a node lock no tick refreshed for this long belongs to a dead evacuation
TICK_LOCK_S = 60  # longer than any tick: a tick that died lets the next one in after this


class Records:
    """Evacuation records, cancel flags and locks in ferry's Redis."""

    def __init__(self, r: redis.Redis) -> None:
        self.r = r

    def get(self, eid: str) -> dict[str, Any]:
        raw = self.r.get(f"ferry:evac:{check_evac_id(eid)}")
        if raw is None:
            raise BadRequest(f"no evacuation {eid}")
        rec: dict[str, Any] = json.loads(str(raw))
        return rec

    def put(self, rec: dict[str, Any]) -> None:
        self.r.set(f"ferry:evac:{rec['id']}", json.dumps(rec))

    def delete(self, eid: str) -> None:
        self.r.delete(f"ferry:evac:{eid}")

    def lock(self, node: str, eid: str) -> str | None:
        """Take ``node``'s evacuation lock for ``eid``; the holder's id if another has it."""
        if self.r.set(f"ferry:evac:node:{node}", eid, nx=True, ex=LOCK_TTL_S):
            return None
        return str(self.r.get(f"ferry:evac:node:{node}") or "an evacuation that just ended")

    def refresh(self, node: str, eid: str) -> None:
        self.r.set(f"ferry:evac:node:{node}", eid, ex=LOCK_TTL_S)

    def unlock(self, node: str, eid: str) -> None:
        key = f"ferry:evac:node:{node}"
        if self.r.get(key) == eid:
            self.r.delete(key)

    def cancel(self, eid: str) -> None:
        self.r.set(f"ferry:evac:{eid}:cancel", "1", ex=7 * 86400)

    def cancelled(self, eid: str) -> bool:
        return bool(self.r.exists(f"ferry:evac:{eid}:cancel"))

    def hold_tick(self, eid: str) -> bool:
        """Hold ``eid``'s tick; False when another holds it, which is then asked to run again."""
        if self.r.set(f"ferry:evac:{eid}:tick", "1", nx=True, ex=TICK_LOCK_S):
            return True
        self.r.set(f"ferry:evac:{eid}:again", "1", ex=TICK_LOCK_S)
        return False

    def release_tick(self, eid: str) -> bool:
        """Let ``eid``'s tick go; whether another asked for one meanwhile.

        Released first: one asking after this holds the tick itself.
        """
        self.r.delete(f"ferry:evac:{eid}:tick")
        return bool(self.r.getdel(f"ferry:evac:{eid}:again"))

    def ask_tick(self, eid: str) -> bool:
        """Whether to queue a tick of ``eid``: False while one is queued (until it starts)."""
        return bool(self.r.set(f"ferry:evac:{eid}:queued", "1", nx=True, ex=TICK_LOCK_S))

    def took_tick(self, eid: str) -> None:
        """The queued tick of ``eid`` starts: one asked for from now on is queued again."""
        self.r.delete(f"ferry:evac:{eid}:queued")
