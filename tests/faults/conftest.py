"""The fault suite's cluster fixture and its table in the run's summary."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import cluster_env, criu_works, need, running
from tests.faults.cluster import NODES, FaultCluster
from tests.faults.tally import TALLY


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The fault suite's table, in every run's summary."""
    if TALLY["faults tried"]:
        terminalreporter.write_line(
            "fault suite: " + ", ".join(f"{k} {v}" for k, v in TALLY.items())
        )


def fault_env(redis_url: str, control: str) -> dict[str, str]:
    return {
        **cluster_env(redis_url),
        "FERRY_FAILPOINTS": control,
        "FERRY_PROGRESS_TIMEOUT_S": "20",
        "FERRY_NODE_TTL_S": "4",
    }


@pytest.fixture(scope="module")
def faults(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[FaultCluster]:
    ok, why = criu_works()
    need(ok, why)
    base = tmp_path_factory.mktemp("faults")
    c = FaultCluster(base, fault_env(redis_url, str(base / "failpoints")))
    c.disarm()
    with running(c, list(NODES)):
        yield c
