"""Daemons are quiet by default: one line when up, no banner, no task chatter."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request

import pytest

from tasks.api.localcluster import LocalCluster
from tests.integration.helpers import free_port, wait_for
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


def test_flower_says_one_line_when_up(sim_cluster: LocalCluster) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tasks.api.cli", "flower", "--no-auth", "--port", str(port)],
        env=sim_cluster.env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: _serves(f"http://127.0.0.1:{port}/"), timeout=60)
        time.sleep(3)  # Flower's inspect rounds: no warning may follow
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert (
        err.splitlines()[0]
        == f"ferry: Flower on http://localhost:{port}: each phase a task, as the nodes run them"
    )
    assert "Registered tasks" not in err and "WARNING" not in err, err


def _serves(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except OSError:
        return False
