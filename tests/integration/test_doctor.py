"""``ferry doctor`` for real: this machine's own probe (real CRIU, its lazy round trip,
the kernel tried), and a cluster's nodes as their workers published them."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tasks.api.localcluster import ROOT
from tests.conftest import criu_works, need

pytestmark = pytest.mark.criu


def doctor(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tasks.api.cli", "doctor", *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_doctor_local_lists_what_this_machine_has() -> None:
    ok, why = criu_works()
    need(ok, why)
    res = doctor("--local", "--json")
    assert res.returncode == 0, res.stdout + res.stderr
    (node,) = json.loads(res.stdout)["nodes"]
    assert node["criu"] and node["page_size"] > 0 and node["bits"] in (32, 64)
    assert {"cold", "delta"} <= set(node["strategies"])
    assert "checkpoint_restore" in node["has"] and "namespaces" in node["has"]
    assert set(node["has"]).isdisjoint(m["need"] for m in node["missing"])
    for m in node["missing"]:
        assert m["fix"] and m["costs"]
    human = doctor("--local")
    assert human.returncode == 0, human.stderr
    assert "runs: " + ", ".join(node["strategies"]) in human.stdout
    # the tracker the probe found by really tracking a page; precopy runs wherever there is one
    assert node["dirty_tracker"] in ("soft-dirty", "uffd-wp", "none")
    assert f"dirty tracker: {node['dirty_tracker']}" in human.stdout
    assert ("precopy" in node["strategies"]) == (node["dirty_tracker"] != "none")
    if "uffd_wp" in node["has"] and "soft_dirty" not in node["has"]:
        assert node["dirty_tracker"] == "uffd-wp"
