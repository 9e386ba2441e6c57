"""Facts about live processes, read from /proc."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path


def start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot; None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def state(pid: int) -> str | None:
    """The one-letter state (R, S, T, Z, ...) of ``pid``, or None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[0]


def comm(pid: int) -> str | None:
    """The command name of ``pid``, or None if it is gone."""
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return None


def alive(pid: int, ticks: int | None = None) -> bool:
    """True if ``pid`` exists, is not a zombie, and (if given) started at ``ticks``."""
    st = state(pid)
    if st is None or st in ("Z", "X"):
        return False
    return ticks is None or start_ticks(pid) == ticks


def tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (those that exit during the walk may be left out)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:  # a process that exits meanwhile takes its /proc dir with it
            children = [t.read_text() for t in Path(f"/proc/{p}/task").glob("*/children")]
        except OSError:
            continue
        todo += [int(c) for text in children for c in text.split()]
    return out


def activity(pid: int) -> int:
    """How often ``pid``'s tree was scheduled so far: context switches of its every thread.

    It changes whenever one of them ran (and when one exits): progress, whatever it does.
    """
    total = 0
    for p in tree(pid):
        for status in Path(f"/proc/{p}/task").glob("*/status"):
            try:
                lines = status.read_text().splitlines()
            except OSError:  # that thread exited meanwhile
                continue
            total += sum(int(x.split()[1]) for x in lines if "ctxt_switches:" in x)
    return total


def private_dir(path: Path) -> Path:
    """``path`` as a directory only its owner may enter (0700), made so even when it
    was created beforehand with a laxer mode."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    if path.stat().st_mode & 0o077:
        path.chmod(0o700)
    return path


def rss_bytes(pid: int) -> int:
    """Resident memory of ``pid`` and its descendants."""
    total = 0
    for p in tree(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            continue
    return total


def signal_tree(pid: int, sig: int) -> None:
    """Send ``sig`` to ``pid`` and every descendant (SIGCONT after --leave-stopped)."""
    for p in tree(pid):
        try:
            os.kill(p, sig)
        except ProcessLookupError:
            continue


def kill_and_wait(pid: int, timeout_s: float = 5.0) -> bool:
    """SIGKILL ``pid`` (a pid-namespace init takes its namespace with it); True once gone."""
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return True
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return True
        except ChildProcessError:
            pass
        if not alive(pid):
            return True
        time.sleep(0.01)
    return False


def detach(*keep: int) -> None:
    """Make this forked child of a worker a session of its own that holds only ``keep``:
    none of the worker's listeners, connections or log, which must close when the
    worker does."""
    os.setsid()
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    edge = 3
    for fd in sorted(keep):
        os.closerange(edge, fd)
        edge = fd + 1
    os.closerange(edge, os.sysconf("SC_OPEN_MAX"))
