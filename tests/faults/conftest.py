"""A cluster whose workers can be made to die at any phase (workers.failpoints)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tasks.localcluster import LocalCluster
from tests.conftest import cluster_env, criu_works, need, running

TALLY: dict[str, int] = {"faults tried": 0, "containers lost": 0, "containers duplicated": 0,
                         "migrations without a final state": 0, "done": 0, "rolled back": 0}


@pytest.fixture(scope="session", autouse=True)
def fault_table() -> Iterator[dict[str, int]]:
    """Print the suite's table at the end: the last three rows must stay 0."""
    yield TALLY
    if TALLY["faults tried"]:
        print("\nfault suite: " + ", ".join(f"{k} {v}" for k, v in TALLY.items()))


class FaultCluster(LocalCluster):
    """A LocalCluster with a failpoint file every worker reads."""

    @property
    def control(self) -> Path:
        return self.base / "failpoints"

    def arm(self, point: str) -> None:
        self.control.write_text(point + "\n")

    def disarm(self) -> None:
        self.control.write_text("")


@pytest.fixture(scope="module")
def faults(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[FaultCluster]:
    ok, why = criu_works()
    need(ok, why)
    base = tmp_path_factory.mktemp("faults")
    c = FaultCluster(base, {**cluster_env(redis_url, base.name),
                            "FERRY_FAILPOINTS": str(base / "failpoints"),
                            "FERRY_PROGRESS_TIMEOUT_S": "20", "FERRY_NODE_TTL_S": "4"})
    c.disarm()
    with running(c, ["f1", "f2"]):
        yield c
