"""Facts from /proc while processes come and go, and the node's private dirs."""

from __future__ import annotations

import stat
import subprocess
import sys
import time
from pathlib import Path

from tests.integration.helpers import wait_for
from workers import procs


def test_a_tree_walk_survives_processes_exiting_under_it() -> None:
    # Children that exit while the walk reads their /proc dirs (the race that made
    # `ferry run` report an error for a container that did start, 2 in ~215 runs).
    for _ in range(100):
        p = subprocess.Popen(["sh", "-c", "true & true & true & wait"])
        seen = procs.tree(p.pid)
        assert seen[0] == p.pid
        p.wait()
    assert procs.tree(p.pid) == [p.pid]  # gone: just itself, no error


def test_a_state_dir_made_beforehand_with_0755_becomes_private(tmp_path: Path) -> None:
    d = tmp_path / "state"
    d.mkdir(mode=0o755)
    d.chmod(0o755)
    procs.private_dir(d)
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    new = procs.private_dir(tmp_path / "a" / "b")
    assert stat.S_IMODE(new.stat().st_mode) == 0o700


def test_activity_moves_while_a_tree_runs_and_stands_while_it_waits() -> None:
    ticker = subprocess.Popen([sys.executable, "-c", "import time\nwhile True: time.sleep(0.005)"])
    reader = subprocess.Popen(["cat"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
    try:
        wait_for(lambda: procs.state(reader.pid) == "S")  # asleep in its read
        before = procs.activity(ticker.pid)
        wait_for(lambda: procs.activity(ticker.pid) != before)
        waiting = procs.activity(reader.pid)
        time.sleep(0.05)  # blocked on its stdin: never scheduled meanwhile
        assert procs.activity(reader.pid) == waiting
        assert reader.stdin is not None
        reader.stdin.write(b"x\n")
        reader.stdin.flush()
        wait_for(lambda: procs.activity(reader.pid) != waiting)  # the read returned: it ran
    finally:
        for p in (ticker, reader):
            p.kill()
            p.wait()
