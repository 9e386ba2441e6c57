"""A cluster whose workers can be made to die at any phase (workers.failpoints)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tasks.localcluster import LocalCluster
from tests.conftest import cluster_env, criu_works, need, running
from tests.faults.tally import TALLY


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The fault suite's table, in every run's summary."""
    if TALLY["faults tried"]:
        terminalreporter.write_line(
            "fault suite: " + ", ".join(f"{k} {v}" for k, v in TALLY.items()))


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
