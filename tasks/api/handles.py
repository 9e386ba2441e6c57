"""Handles on what a client started: a migration, an evacuation. Follow them, wait
for them; they read the state store, they never block a worker."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from tasks.control.cluster import Cluster
from tasks.core.evacplan import OUTCOMES, RUNNING
from tasks.core.migration import Migration, State
from workers.errors import BadRequest, FerryError


@dataclass
class MigrationHandle:
    """A submitted migration: follow it, wait for it."""

    id: str
    client: Cluster

    def status(self) -> Migration:
        return self.client.status(self.id)

    def progress(self) -> dict[str, Any]:
        m = self.status()
        return {
            "state": m.state.value,
            "phase": m.phase.value if m.phase else None,
            "attempt": m.attempt,
            **m.results.get("progress", {}),
        }

    def wait(self, timeout: float | None = None, poll_s: float = 0.1) -> Migration:
        """Block until the migration is final; raise TimeoutError after ``timeout`` s."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            m = self.status()
            if m.state.final:
                return m
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"{self.id} still {m.state.value} ({m.phase}) after {timeout} s")
            time.sleep(poll_s)

    def result(self) -> Migration:
        """The final record; raises FerryError if the migration did not finish DONE."""
        m = self.wait()
        if m.state is not State.DONE:
            raise FerryError(f"{self.id} {m.state.value}: {m.errors[-1] if m.errors else ''}")
        return m


@dataclass
class EvacuationHandle:
    """A started evacuation, or a dry run's plan: follow it, wait for its report, cancel it."""

    id: str | None  # None for a dry run: nothing was started
    client: Cluster
    plan: dict[str, Any]  # moves, unplaceable, limits and lower bound, as planned at the start

    @property
    def dry_run(self) -> bool:
        return self.id is None

    def record(self) -> dict[str, Any]:
        if self.id is None:
            raise BadRequest("a dry run started nothing: there is no record")
        return self.client.store.evacuations.get(self.id)

    def progress(self) -> dict[str, Any]:
        """Outcome counts, and each running migration's phase and bytes."""
        if self.id is None:
            return {
                "id": None,
                "node": self.plan["node"],
                "state": "dry_run",
                "total": len(self.plan["moves"]) + len(self.plan["unplaceable"]),
                "finished": 0,
                "counts": {},
                "running": [],
                "elapsed_s": 0.0,
            }
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
            running.append(
                {
                    "container": name,
                    "dst": mv["dst"],
                    "migration": m.id,
                    "state": m.state.value,
                    "phase": m.phase.value if m.phase else None,
                    "past_no_return": m.past_no_return,  # holds no slot any more
                    "strategy": m.strategy,
                    "bytes_sent": p.get("bytes_sent", 0),
                    "bytes_total": p.get("bytes_total"),
                    "memory_bytes": mv["memory_bytes"],
                }
            )
        counts = Counter(mv["outcome"] for mv in rec["moves"].values())
        end = rec["finished"] or time.time()
        return {
            "id": rec["id"],
            "node": rec["node"],
            "state": rec["state"],
            "total": len(rec["moves"]),
            "finished": sum(counts[o] for o in OUTCOMES),
            "counts": dict(counts),
            "running": running,
            "elapsed_s": round(end - rec["started"], 3),
        }

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
                raise TimeoutError(
                    f"{self.id} still running after {timeout} s "
                    f"(it goes on: `ferry evacuate --cancel {self.id}` stops it)"
                )
            time.sleep(poll_s)

    def result(self) -> dict[str, Any]:
        """The report, once the evacuation is over: one row per container, totals, a message."""
        return self.wait()

    def cancel(self) -> None:
        """Start no more moves; the migrations under way finish or roll back."""
        rec = self.record()
        if rec["state"] != "running":
            raise BadRequest(f"{self.id} is already {rec['state']}")
        self.client.store.evacuations.cancel(rec["id"])
