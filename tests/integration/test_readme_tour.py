"""The README's quick tour, run command by command on a fresh state dir with
nothing configured (its own embedded Redis; real CRIU where it works, else the
SIMULATED runtime): every command does what its comment says and exits 0, and
``ferry down`` stops the embedded Redis at the end.

What the tour shows but cannot run as a script is named here, with why:
``ID`` is the last migration's id; ``./job`` is the reader's own program;
``a / b`` is two commands; Flower and the metrics server run until stopped;
``resolve`` needs a failed migration, and ``cancel`` of the done ``ID`` is
refused in one line (rc 2).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

from tasks.api.demo import criu_usable
from tasks.api.localcluster import ROOT, LocalCluster
from tests.integration.helpers import wait_for

TOUR = re.compile(r"^## A quick tour\n.*?^```sh\n(.*?)^```$", re.MULTILINE | re.DOTALL)
SERVERS = ("flower", "metrics")  # they serve until stopped


def tour_commands() -> list[list[str]]:
    """The tour's commands as argv lists (a quoted argument may span lines)."""
    (block,) = TOUR.findall((ROOT / "README.md").read_text())
    commands, pending = [], ""
    for line in block.splitlines():
        pending += line + "\n"
        try:
            argv = shlex.split(pending, comments=True)
        except ValueError:  # an open quote: the argument goes on
            continue
        pending = ""
        if argv:
            commands.append(argv)
    return commands


def test_the_tour_has_its_commands() -> None:
    verbs = [c[1] for c in tour_commands() if c[0] == "ferry"]
    for verb in ("coordinator", "worker", "run", "migrate", "status", "watch", "stop", "down"):
        assert verb in verbs


def test_the_readme_tour_runs_as_written(tmp_path: Path) -> None:
    ok, _why = criu_usable()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FERRY_")}
    env |= {"FERRY_STATE_DIR": str(tmp_path), "FERRY_RUNTIME": "criu" if ok else "sim"}
    cluster = LocalCluster(tmp_path, env)
    nodes: list[str] = []
    last_id = ""

    def ferry(*argv: str, rc: int = 0) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "tasks.api.cli", *argv],
            env=cluster.env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
        )
        said = done.stdout + done.stderr
        assert done.returncode == rc, (argv, said)
        assert "Traceback" not in said, (argv, said)
        return said

    try:
        for argv in tour_commands():
            if argv[0] == ".":
                continue  # the venv: this test runs in it
            assert argv[0] == "ferry", argv
            verb, rest = argv[1], argv[2:]
            if verb == "coordinator":
                cluster.start_coordinator()
            elif verb == "worker":
                nodes.append(rest[rest.index("--node") + 1])
                cluster.start_node(nodes[-1])
                cluster.wait_ready(nodes, timeout=120)
            elif "./job" in rest or verb in SERVERS or verb == "resolve":
                continue
            elif "/" in rest:
                i = rest.index("/")
                ferry(verb, *rest[:i])
                ferry(*rest[i + 2 :])
            elif verb == "cancel":  # ID is done: past its point of no return, one line, rc 2
                said = ferry(verb, *[last_id if a == "ID" else a for a in rest], rc=2)
                assert said == f"error: {last_id} is already done\n", said
            elif verb == "down":
                cluster.stop()
                ferry(verb)
                assert not (tmp_path / "redis.sock").exists()
            else:
                said = ferry(verb, *[last_id if a == "ID" else a for a in rest])
                if verb == "migrate":
                    last_id = cluster.client.migrations(limit=1)[0].id
                if verb == "logs":
                    assert said.strip(), "the counter printed nothing"
    finally:
        cluster.stop()
        if (tmp_path / "redis.sock").exists():
            subprocess.run([sys.executable, "-m", "tasks.api.cli", "down"], env=cluster.env)
    wait_for(lambda: not (tmp_path / "redis.sock").exists())
