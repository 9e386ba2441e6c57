"""A local cluster whose workers can be made to die at any phase, and what to check after."""

from __future__ import annotations

import json
import time
from pathlib import Path

from tasks.localcluster import LocalCluster
from tests.faults.tally import TALLY
from tests.integration.helpers import ticks, wait_for
from workers import procs

NODES = ("f1", "f2")
COLD = ["prepare:kill-before", "dump:kill-before", "dump:kill-after", "transfer:kill-before",
        "transfer:kill-after", "restore:kill-before", "restore:kill-after", "verify:kill-after",
        "cleanup:kill-before", "cleanup:kill-after"]
POSTCOPY = ["dump:kill-after", "restore:kill-after", "pages:kill-before"]
DELTA = ["precopy:kill-after", "rebuild:kill-before", "dump:kill-after", "restore:kill-before"]


class FaultCluster(LocalCluster):
    """A LocalCluster with a failpoint file every worker reads (workers.failpoints)."""

    @property
    def control(self) -> Path:
        return self.base / "failpoints"

    def arm(self, point: str) -> None:
        self.control.write_text(point + "\n")

    def disarm(self) -> None:
        self.control.write_text("")

    def copies(self, name: str) -> list[int]:
        """Pids of the running (not frozen) copies of ``name`` in every node's inventory."""
        live = []
        for node in NODES:
            d = self.base / "nodes" / node / "containers" / f"{name}.json"
            if d.exists():
                entry = json.loads(d.read_text())
                if procs.alive(entry["pid"], entry["ticks"]) and procs.state(entry["pid"]) != "T":
                    live.append(entry["pid"])
        return live

    def leftovers(self, mid: str) -> list[Path]:
        """Image dirs of ``mid`` still on any node."""
        return [p for node in NODES for p in
                (self.base / "nodes" / node / "images" / mid,
                 self.base / "nodes" / node / "incoming" / mid) if p.exists()]


def outcome(c: FaultCluster, name: str, log: str, mid: str) -> str:
    """Check one faulted migration and count it in TALLY; its final state.

    Exactly one copy runs, its counter went on with no value lost or repeated,
    no image dir is left, and the record is final with the fault in it.
    """
    TALLY["faults tried"] += 1
    m = c.client.status(mid)
    TALLY["migrations without a final state"] += 0 if m.state.final else 1
    assert m.state.value in ("done", "rolled_back"), (m.state, m.errors)
    assert any(w in e for e in m.errors for w in ("restarted", "stalled", "answering")), m.errors
    try:
        wait_for(lambda: len(c.copies(name)) == 1, timeout=10)
    finally:
        n = len(c.copies(name))
        TALLY["containers lost"] += n == 0
        TALLY["containers duplicated"] += n > 1
    before = max(ticks(log))
    time.sleep(0.5)
    after = ticks(log)
    assert after == sorted(set(after)) and after[-1] > before, "the counter did not go on"
    wait_for(lambda: not c.leftovers(mid), timeout=10)
    TALLY[m.state.value.replace("_", " ")] += 1
    return m.state.value
