"""Daemons are quiet by default: one line when up, no banner, no task chatter."""

from __future__ import annotations

from tasks.api.localcluster import LocalCluster


def test_a_node_and_the_coordinator_say_one_line_when_up(sim_cluster: LocalCluster) -> None:
    sim_cluster.client.run("s1", ["sleep", "inf"], name="quiet")  # a task ran on s1
    sim_cluster.client.kill("quiet")
    for key, first in (("s1", "ferry: node s1 up: "), ("coordinator", "ferry: coordinator up: ")):
        text = (sim_cluster.logs / f"{key}.log").read_text()
        assert text.startswith(first), text[:300]
        assert "superuser privileges" not in text
        assert "[tasks]" not in text and "-------------- " not in text  # Celery's banner
        assert " succeeded in " not in text  # INFO: every task
