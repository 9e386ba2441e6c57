"""The README's quick tour, run command by command on a fresh state dir with
nothing configured (its own embedded Redis; real CRIU where it works, else the
SIMULATED runtime): every command does what its comment says and exits 0, and
``ferry down`` stops the embedded Redis at the end.

Read as a shell would: ``export`` sets the daemons' environment, ``ID`` is
the last migration's id, ``a / b`` is two commands, ``&`` a daemon (Flower and
the metrics server are asked for a page, then stopped). ``cancel`` and
``resolve`` of the done ``ID`` are refused in one line (rc 2), as their
comments say they would be.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
import urllib.request
from base64 import b64encode
from pathlib import Path

from tasks.api.demo import criu_usable
from tasks.api.localcluster import ROOT, LocalCluster
from tests.integration.helpers import wait_for

TOUR = re.compile(r"^## A quick tour\n.*?^```sh\n(.*?)^```$", re.MULTILINE | re.DOTALL)
# what each server of the tour answers on, and with which credentials
SERVERS = {
    "flower": ("http://127.0.0.1:5555/", "user:pass", "Flower"),
    "metrics": ("http://127.0.0.1:9464/metrics", "", "ferry_node_up"),
}


def page(url: str, auth: str) -> str:
    """``url``'s body once it answers (the server may still be starting), else ''."""
    req = urllib.request.Request(url)
    if auth:
        req.add_header("Authorization", "Basic " + b64encode(auth.encode()).decode())
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(req, timeout=5) as r:
                return str(r.read().decode())
        except OSError:
            time.sleep(0.5)
    return ""


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
    servers: list[subprocess.Popen[bytes]] = []

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
            if argv[0] == "export":
                cluster.env.update(a.split("=", 1) for a in argv[1:])
                continue
            if argv[0] == "mkdir":
                subprocess.run(argv, check=True)
                continue
            assert argv[0] == "ferry", argv
            verb, rest = argv[1], argv[2:]
            if verb == "coordinator":
                cluster.start_coordinator()
            elif verb == "worker":
                nodes.append(rest[rest.index("--node") + 1])
                cluster.start_node(nodes[-1])
                cluster.wait_ready(nodes, timeout=120)
            elif verb in SERVERS:
                url, auth, says = SERVERS[verb]
                argv = [sys.executable, "-m", "tasks.api.cli", verb, *rest[:-1]]  # less the &
                servers.append(subprocess.Popen(argv, env=cluster.env, cwd=ROOT))
                assert says in page(url, auth), f"{verb} did not serve {url}"
            elif "/" in rest:
                i = rest.index("/")
                ferry(verb, *rest[:i])
                ferry(*rest[i + 2 :])
            elif verb == "cancel":  # ID is done: past its point of no return, one line, rc 2
                said = ferry(verb, *[last_id if a == "ID" else a for a in rest], rc=2)
                assert said == f"error: {last_id} is already done\n", said
            elif verb == "resolve":  # ID is done: its source holds no copy to keep
                said = ferry(verb, *[last_id if a == "ID" else a for a in rest], rc=2)
                assert said.startswith("error: ") and said.count("\n") == 1, said
            elif verb == "down":
                for server in servers:
                    server.terminate()
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
        for server in servers:
            server.kill()
            server.wait()
        cluster.stop()
        if (tmp_path / "redis.sock").exists():
            subprocess.run([sys.executable, "-m", "tasks.api.cli", "down"], env=cluster.env)
    wait_for(lambda: not (tmp_path / "redis.sock").exists())
