"""A real cold migration: real CRIU, real workers, real Redis."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.integration.helpers import COUNTER, assert_went_on, ticks, wait_for
from workers import procs

pytestmark = pytest.mark.criu


def _other(node: str) -> str:
    return "n2" if node == "n1" else "n1"


def test_counter_goes_on_on_the_destination_and_the_source_copy_is_gone(cluster) -> None:
    client = cluster.client
    info = client.run("n1", [sys.executable, "-u", "-c", COUNTER], name="counter")
    wait_for(lambda: len(ticks(info["log"])) > 10)
    m = client.migrate("counter", "n2", strategy="cold").wait(timeout=60)
    assert m.state.value == "done", m.errors
    # the pages streamed into n2's CRIU page server behind a token, and checked
    assert m.options.page_server == "auto"
    pages = m.results["dump"]["pages"]
    assert pages["bytes"] > 0 and len(pages["blake3"]) == 64
    before = max(ticks(info["log"]))
    wait_for(lambda: max(ticks(info["log"])) >= before + 8)
    after = ticks(info["log"])
    assert_went_on(after, before)
    assert not procs.alive(info["pid"]), "the source copy still runs"
    assert m.results["verify"]["pid"] != info["pid"]
    assert procs.alive(m.results["verify"]["pid"])
    assert m.results["verify"]["ran_ms"] is not None  # verify saw the restored counter run
    where = wait_for(
        lambda: {c["node"] for c in client.containers() if c["name"] == "counter"} == {"n2"}
    )
    assert where
    from tasks.core.summary import downtime

    d = downtime(m)
    assert d is not None and d["downtime_ms"] > 0
    assert d["wire_ms"] >= m.results["dump"]["memwrite_ms"]  # the pages crossed inside the dump
    # and back again: the restored copy is an ordinary container of n2
    back = client.migrate("counter", "n1").wait(timeout=60)
    assert back.state.value == "done", back.errors
    client.kill("counter")


def test_a_process_tree_moves_whole(cluster) -> None:
    client = cluster.client
    script = (
        "import os, sys, time\n"
        "if os.fork() == 0:\n"
        "    i = 0\n"
        "    while True:\n"
        "        print('tick', i, flush=True); i += 1; time.sleep(0.05)\n"
        "os.wait()\n"
    )
    info = client.run("n1", [sys.executable, "-u", "-c", script], name="tree")
    wait_for(lambda: len(ticks(info["log"])) > 5)
    assert len(procs.tree(info["pid"])) == 2
    m = client.migrate("tree", "n2", page_server="off").wait(timeout=60)
    assert m.state.value == "done", m.errors
    assert "pages" not in m.results["dump"]  # every image went as a file
    before = max(ticks(info["log"]))
    wait_for(lambda: max(ticks(info["log"])) >= before + 6)
    assert_went_on(ticks(info["log"]), before)
    assert len(procs.tree(m.results["verify"]["pid"])) == 2
    client.kill("tree")


def test_a_process_with_an_open_file_keeps_writing_it(cluster, tmp_path) -> None:
    client = cluster.client
    script = (
        "import time\n"
        "f = open('numbers', 'w')\n"
        "i = 0\n"
        "while True:\n"
        "    f.write(f'{i}\\n'); f.flush(); i += 1; time.sleep(0.05)\n"
    )
    info = client.run("n1", [sys.executable, "-u", "-c", script], name="writer")
    numbers = Path(info["log"]).parent / "numbers"
    wait_for(lambda: numbers.exists() and len(numbers.read_text().split()) > 5)
    m = client.migrate("writer", "n2").wait(timeout=60)
    assert m.state.value == "done", m.errors
    before = int(numbers.read_text().split()[-1])
    wait_for(lambda: int(numbers.read_text().split()[-1]) >= before + 6)
    values = [int(v) for v in numbers.read_text().split()]
    assert values == list(range(len(values))), "the file was rewritten or written twice"
    assert values[-1] > before
    client.kill("writer")


def test_cli_migrate_prints_a_summary_and_json(cluster) -> None:
    client = cluster.client
    client.run("n1", [sys.executable, "-u", "-c", COUNTER], name="clicount")
    res = cluster.cli("migrate", "clicount", "--to", "n2", "--json")
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout)
    assert summary["state"] == "done" and summary["downtime_ms"] > 0 and summary["bytes"] > 0
    status = json.loads(cluster.cli("status", summary["id"], "--json").stdout)
    assert status["state"] == "done"
    ps = json.loads(cluster.cli("ps", "--json").stdout)
    assert any(c["name"] == "clicount" and c["node"] == "n2" for c in ps)
    human = cluster.cli("migrate", "clicount", "--to", "n1")
    assert human.returncode == 0 and "downtime" in human.stdout
    client.kill("clicount")
