"""The tour's tables in a real 80x24 terminal: no line wider than the terminal, and
every id whole (they are what `status`, `watch`, `cancel` and `resolve` take)."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import struct
import sys
import termios

from tasks.api.localcluster import ROOT, LocalCluster


def in_a_terminal(env: dict[str, str], *argv: str, cols: int = 80, rows: int = 24) -> str:
    """What ``ferry ARGV`` printed in a pseudo-terminal of ``cols`` x ``rows``."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: the terminal is its stdin, stdout and stderr
        os.chdir(ROOT)
        os.execve(sys.executable, [sys.executable, "-m", "tasks.api.cli", *argv], env)
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
    out = b""
    while True:
        ready, _, _ = select.select([fd], [], [], 60)
        if not ready:
            break
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
    os.waitpid(pid, 0)
    os.close(fd)
    return out.decode(errors="replace")


def visible(text: str) -> list[str]:
    """The lines as the terminal shows them: colour and cursor codes left out."""
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text).replace("\r", "")
    return plain.split("\n")


def test_the_tours_tables_fit_80_columns_with_ids_whole(sim_cluster: LocalCluster) -> None:
    c = sim_cluster.client
    c.run("s1", ["count"], name="a-rather-long-container-name")
    m = c.migrate("a-rather-long-container-name", to="s2", strategy="cold").wait(timeout=60)
    env = {**sim_cluster.env, "TERM": "xterm"}
    env.pop("COLUMNS", None)
    try:
        tour = (["nodes"], ["ps"], ["status"], ["status", m.id], ["doctor"], ["doctor", "--local"])
        for argv in (*tour, ["evacuate", "s2", "--dry-run"], ["watch", m.id]):
            lines = visible(in_a_terminal(env, *argv))
            wide = [ln for ln in lines if len(ln) > 80]
            assert not wide, (argv, wide)
            assert "…" not in "".join(lines), (argv, lines)  # nothing cut short
        status = "\n".join(visible(in_a_terminal(env, "status")))
        assert m.id in status and "a-rather-long-container-name" in status
    finally:
        c.kill("a-rather-long-container-name")
