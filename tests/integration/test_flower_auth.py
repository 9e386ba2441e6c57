"""Flower never runs open by accident, and never shows a signed command's MAC."""

from __future__ import annotations

from typing import Any

import pytest
from celery.signals import before_task_publish
from click.testing import CliRunner

from tasks.api.cli import main
from tasks.api.localcluster import LocalCluster


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        ([], "needs --basic-auth user:password"),
        (["--no-auth", "--address", "0.0.0.0"], "listens on loopback only"),
        (["--basic-auth", "justauser"], "wants user:password"),
    ],
)
def test_flower_refuses_to_start_open(argv: list[str], said: str) -> None:
    res = CliRunner().invoke(main, ["flower", *argv], env={"FERRY_FLOWER_AUTH": ""})
    assert res.exit_code == 2, res.output
    assert said in " ".join(res.output.split())


def test_a_signed_commands_mac_is_not_in_what_flower_shows(sim_cluster: LocalCluster) -> None:
    shown: list[dict[str, Any]] = []

    def record(headers: dict[str, Any] | None = None, **_: Any) -> None:
        if headers and str(headers.get("task", "")).startswith("ferry.node."):
            shown.append(headers)

    before_task_publish.connect(record, weak=False)
    try:
        info = sim_cluster.client.run("s1", ["count"], name="shown")
        sim_cluster.client.kill("shown")
    finally:
        before_task_publish.disconnect(record)
    assert info["name"] == "shown" and len(shown) == 2
    for h in shown:  # Flower's args column is the message's argsrepr
        assert h["argsrepr"].endswith("'<mac>')"), h["argsrepr"]
        assert len([p for p in h["argsrepr"].split("'") if len(p) == 64]) == 0  # no hex MAC
