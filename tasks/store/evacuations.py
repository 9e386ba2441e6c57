"""Evacuation records in ferry's Redis, and the handle a client follows one with.

A record's ``moves`` map each container of the drained node to its
destination and outcome: ``pending``, ``running`` (its migration id is set),
then one of OUTCOMES for good.

Keys::

    ferry:evac:<id>            JSON record: node, plan, limits, moves (outcome, migration), report
    ferry:evac:<id>:cancel     present once a cancel was asked for
    ferry:evac:<id>:tick       held by the one tick that runs (a tick may be redelivered)
    ferry:evac:node:<node>     the evacuation draining <node> (SET NX; refreshed by each tick)
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import redis

from workers.errors import BadRequest, FerryError

if TYPE_CHECKING:
    from tasks.api.client import Ferry

LOCK_TTL_S = 600  # a node lock no tick refreshed for this long belongs to a dead evacuation
TICK_LOCK_S = 60  # longer than any tick: a tick that died lets the next one in after this
EVAC_ID = re.compile(r"^e-[0-9a-f]{12}\Z")
OUTCOMES = ("moved", "rolled_back", "failed", "not_placed", "not_started", "gone")
PENDING, RUNNING = "pending", "running"  # a move's outcome before one of OUTCOMES


def check_evac_id(eid: object) -> str:
    if not isinstance(eid, str) or not EVAC_ID.match(eid):
        raise BadRequest(f"bad evacuation id {eid!r}: ids look like e-0123456789ab")
    return eid


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
        return bool(self.r.set(f"ferry:evac:{eid}:tick", "1", nx=True, ex=TICK_LOCK_S))

    def release_tick(self, eid: str) -> None:
        self.r.delete(f"ferry:evac:{eid}:tick")


@dataclass
class EvacuationHandle:
    """A started evacuation, or a dry run's plan: follow it, wait for its report, cancel it."""

    id: str | None  # None for a dry run: nothing was started
    client: Ferry
    plan: dict[str, Any]  # moves, unplaceable, limits and lower bound, as planned at the start

    @property
    def dry_run(self) -> bool:
        return self.id is None

    def record(self) -> dict[str, Any]:
        if self.id is None:
            raise BadRequest("a dry run started nothing: there is no record")
        return Records(self.client.store.r).get(self.id)

    def progress(self) -> dict[str, Any]:
        """Outcome counts, and each running migration's phase and bytes."""
        if self.id is None:
            return {"id": None, "node": self.plan["node"], "state": "dry_run",
                    "total": len(self.plan["moves"]) + len(self.plan["unplaceable"]),
                    "finished": 0, "counts": {}, "running": [], "elapsed_s": 0.0}
        rec = self.record()
        running = []
        for name, mv in sorted(rec["moves"].items(), key=lambda kv: kv[1]["order"]):
            if mv["outcome"] != RUNNING:
                continue
            try:
                m = self.client.status(mv["migration"])
            except FerryError:
                continue
            p = m.results.get("progress", {})
            running.append({"container": name, "dst": mv["dst"], "migration": m.id,
                            "state": m.state.value, "phase": m.phase.value if m.phase else None,
                            "strategy": m.strategy, "bytes_sent": p.get("bytes_sent", 0),
                            "bytes_total": p.get("bytes_total"),
                            "memory_bytes": mv["memory_bytes"]})
        counts = Counter(mv["outcome"] for mv in rec["moves"].values())
        end = rec["finished"] or time.time()
        return {"id": rec["id"], "node": rec["node"], "state": rec["state"],
                "total": len(rec["moves"]), "finished": sum(counts[o] for o in OUTCOMES),
                "counts": dict(counts), "running": running,
                "elapsed_s": round(end - rec["started"], 3)}

    def wait(self, timeout: float | None = None, poll_s: float = 0.2) -> dict[str, Any]:
        """Block until the evacuation is over and return its report (a dry run: its plan).

        Raises TimeoutError after ``timeout`` s; the evacuation goes on.
        """
        if self.id is None:
            return self.plan
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            rec = self.record()
            if rec["report"] is not None:
                report: dict[str, Any] = rec["report"]
                return report
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"{self.id} still running after {timeout} s "
                                   f"(it goes on: `ferry evacuate --cancel {self.id}` stops it)")
            time.sleep(poll_s)

    def result(self) -> dict[str, Any]:
        """The report, once the evacuation is over: one row per container, totals, a message."""
        return self.wait()

    def cancel(self) -> None:
        """Start no more moves; the migrations under way finish or roll back."""
        rec = self.record()
        if rec["state"] != "running":
            raise BadRequest(f"{self.id} is already {rec['state']}")
        Records(self.client.store.r).cancel(rec["id"])
