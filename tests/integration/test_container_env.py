"""A container never sees its worker's environment (FERRY_SECRET, the broker's URL).

Real node workers with FERRY_SECRET and the broker's URL in their environment
start a real container; its init's and its child's ``/proc/<pid>/environ``
hold the documented basics only, before and after a real CRIU migration.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.integration.helpers import COUNTER, ticks, wait_for
from workers import procs

pytestmark = pytest.mark.criu

BASICS = {"PATH", "HOME", "HOSTNAME", "LANG", "TERM"}
FORKS = "import os, sys\nif os.fork() == 0:\n    exec(sys.argv[1])\nos.wait()\n"


def environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode().split("\0") if "=" in item)


def assert_clean(pid: int, secret: str, broker: str) -> None:
    env = environ(pid)
    assert set(env) == BASICS, env
    blob = Path(f"/proc/{pid}/environ").read_bytes()
    assert secret.encode() not in blob and broker.encode() not in blob
    assert not [k for k in env if k.startswith("FERRY")]


def test_a_container_gets_only_the_basics_not_the_workers_secret(cluster) -> None:
    client = cluster.client
    secret = cluster.env["FERRY_SECRET"]
    broker = cluster.env["FERRY_BROKER_URL"]
    assert secret and broker
    info = client.run("n1", [sys.executable, "-u", "-c", FORKS, COUNTER], name="envcheck")
    wait_for(lambda: len(ticks(info["log"])) > 3)
    tree = procs.tree(info["pid"])
    assert len(tree) == 2
    for pid in tree:
        assert_clean(pid, secret, broker)
    assert environ(info["pid"])["HOSTNAME"] == "envcheck"
    assert environ(info["pid"])["HOME"] == str(Path(info["log"]).parent)
    # a restored copy keeps the environ it was started with: still clean
    m = client.migrate("envcheck", "n2", strategy="cold").wait(timeout=60)
    assert m.state.value == "done", m.errors
    restored = m.results["verify"]["pid"]
    for pid in procs.tree(restored):
        assert_clean(pid, secret, broker)
    client.kill("envcheck")
