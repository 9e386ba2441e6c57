"""Daemons are quiet by default: one line when up, no banner, no task chatter."""

from __future__ import annotations

import pytest

from tasks.api.localcluster import LocalCluster
from tests.integration.helpers import wait_for
from workers.errors import BadRequest


def test_a_node_and_the_coordinator_say_one_line_when_up(sim_cluster: LocalCluster) -> None:
    sim_cluster.client.run("s1", ["sleep", "inf"], name="quiet")  # a task ran on s1
    sim_cluster.client.kill("quiet")
    for key, first in (("s1", "ferry: node s1 up: "), ("coordinator", "ferry: coordinator up: ")):
        text = (sim_cluster.logs / f"{key}.log").read_text()
        assert text.startswith(first), text[:300]
        assert "superuser privileges" not in text
        assert "[tasks]" not in text and "-------------- " not in text  # Celery's banner
        assert " succeeded in " not in text  # INFO: every task


def test_a_refused_task_logs_one_line_not_a_traceback(sim_cluster: LocalCluster) -> None:
    log = sim_cluster.logs / "s1.log"
    before = len(log.read_text())
    with pytest.raises(BadRequest, match="syncs no directories"):
        sim_cluster.client.run("s1", ["sleep", "inf"], name="refused", sync=["/nowhere/job"])
    wait_for(lambda: "syncs no directories" in log.read_text()[before:])
    text = log.read_text()[before:]
    assert "Traceback" not in text, text
    (line,) = [ln for ln in text.splitlines() if "syncs no directories" in ln]
    assert "ferry.node.run" in line and "syncs no directories" in line
