"""``ferry demo`` proves a move and leaves nothing behind: no process, no temp dir."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tasks.api.localcluster import ROOT
from tests.integration.helpers import free_port


def test_the_demo_cleans_up_its_state_dir(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FERRY_")}
    env["TMPDIR"] = str(tmp_path)
    argv = ["demo", "--nodes", "2", "--flower-port", str(free_port())]
    done = subprocess.run(
        [sys.executable, "-m", "tasks.api.cli", *argv],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "demo done" in done.stdout + done.stderr
    assert list(tmp_path.iterdir()) == [], "the demo left its state dir"
