"""The verbs people expect: stop, rm, logs; migrate --bandwidth; status filters;
cancel --wait (on the simulated cluster, through the real CLI)."""

from __future__ import annotations

import json
from typing import Any

from click.testing import CliRunner

from tasks.api.cli import main
from tasks.api.localcluster import LocalCluster
from tests.integration.helpers import wait_for


def cli(c: LocalCluster, *argv: str) -> Any:
    env = {k: v for k, v in c.env.items() if k.startswith("FERRY_")}
    return CliRunner().invoke(main, list(argv), env=env, catch_exceptions=False)


def names(c: LocalCluster) -> set[str]:
    return {k["name"] for k in c.client.containers()}


def test_stop_rm_and_logs(sim_cluster: LocalCluster) -> None:
    assert cli(sim_cluster, "run", "--node", "s1", "--name", "verbs", "--", "count").exit_code == 0
    wait_for(lambda: "verbs" in names(sim_cluster))
    shown = cli(sim_cluster, "logs", "verbs", "-n", "2")
    assert shown.exit_code == 0, shown.output
    refused = cli(sim_cluster, "rm", "verbs")
    assert refused.exit_code == 2 and "ferry stop verbs" in refused.output
    stopped = cli(sim_cluster, "stop", "verbs")
    assert stopped.exit_code == 0 and "verbs stopped on s1" in stopped.output
    wait_for(lambda: "verbs" not in names(sim_cluster))
    gone = cli(sim_cluster, "logs", "verbs")
    assert gone.exit_code == 2 and "verbs" in gone.output


def test_migrate_bandwidth_status_filters_and_cancel_wait(sim_cluster: LocalCluster) -> None:
    c = sim_cluster.client
    c.run("s1", ["count"], name="capped", labels={"sim.memory": str(64 << 20)})
    moved = cli(sim_cluster, "migrate", "capped", "--to", "s2", "--bandwidth", "50M", "--json")
    assert moved.exit_code == 0, moved.output
    mid = json.loads(moved.output)["id"]
    assert c.status(mid).options.bandwidth_bps == 50e6
    done = json.loads(
        cli(sim_cluster, "status", "--state", "done", "--limit", "1", "--json").output
    )
    assert len(done) == 1 and done[0]["state"] == "done"
    every = json.loads(cli(sim_cluster, "status", "--all", "--json").output)
    assert mid in {r["id"] for r in every}
    # a slow one (4 GiB in the model), cancelled and waited for
    c.run("s2", ["count"], name="slow", labels={"sim.memory": str(4 << 30)})
    handle = c.migrate("slow", to="s1", strategy="cold")
    wait_for(lambda: c.status(handle.id).state.value == "running", timeout=30, every=0.02)
    out = cli(sim_cluster, "cancel", handle.id, "--wait", "--json")
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["state"] in ("rolled_back", "cancelled", "done")
    c.kill("capped")
    c.kill("slow")


def test_run_with_labels(sim_cluster: LocalCluster) -> None:
    made = cli(
        sim_cluster,
        "run", "--node", "s1", "--name", "labelled",
        "--label", f"sim.memory={96 << 20}", "--label", "team=web", "--", "count",
    )  # fmt: skip
    assert made.exit_code == 0, made.output
    (rec,) = [k for k in sim_cluster.client.containers() if k["name"] == "labelled"]
    assert rec["labels"] == {"sim.memory": str(96 << 20), "team": "web"}
    assert rec["memory_bytes"] == 96 << 20
    bad = cli(sim_cluster, "run", "--node", "s1", "--label", "nokey", "--", "count")
    assert bad.exit_code == 2 and "'nokey' is not KEY=VALUE" in bad.output
    sim_cluster.client.kill("labelled")
