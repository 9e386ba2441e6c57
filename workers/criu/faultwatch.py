"""When a post-copy tree really waited for its pages: its threads, seen in the kernel.

The lazy-pages daemon logs a fault when it reads it, not when the thread took
it: while the daemon waits for a background chunk from the source, a fault
waits unread, and the log shows a tree that seems to run (no fault pending)
though it is stuck. Seen on the 1 Gbit/s testbed at 1 GiB: 117 ms with no
fault pending in the log and no tick of the workload, between two logged waits.

So from the restore until the daemon exits, a forked watcher looks at every
thread of the tree every :data:`EVERY_S` and notes when one sleeps in
``handle_userfault`` (its ``wchan``). Each run of such samples, from the first
sample that saw a wait to the last, goes to ``lazy-waits.json`` in the images
dir, and :func:`workers.criu.log.lazy_report` adds them to the log's waits.
A run is never longer than the waits it saw: it starts at most one sample late
and ends before the wait did (whose end the log times exactly).

A kernel that shows no ``wchan`` (no kallsyms) gives no runs. Then the log's
waits are all there is, as before.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path

from workers import procs

EVERY_S = 0.002
_TREE_EVERY_S = 0.05  # how often the tree's processes are listed again
WAITS = "lazy-waits.json"
DAEMON_PID = "lazy-pages.pid"  # written by workers.criu.adapter.Criu.start_lazy_pages
_WAITING = "handle_userfault"


def start(pid: int, images: Path, most_s: float) -> int | None:
    """Fork a watcher of ``pid``'s tree until the lazy-pages daemon of ``images`` exits
    (``most_s`` at most); its pid, None without a daemon. The node's supervisor reaps
    it (its subreaper)."""
    (images / WAITS).unlink(missing_ok=True)
    try:
        daemon = int((images / DAEMON_PID).read_text())
    except (OSError, ValueError):
        return None
    child = os.fork()
    if child == 0:  # pragma: no cover (the child; its work is checked end to end)
        status = 0
        try:
            procs.detach()
            runs = watch(pid, daemon, time.monotonic() + most_s)
            part = images / f".{WAITS}.part"
            part.write_text(json.dumps(runs))
            part.rename(images / WAITS)
        except BaseException:
            status = 1
        os._exit(status)
    return child


def watch(pid: int, daemon: int, until: float) -> list[list[float]]:
    """[start, end] (epoch seconds) of each run of samples in which a thread of
    ``pid``'s tree waited for a page, until ``daemon`` exits or ``until``."""
    runs: list[list[float]] = []
    waiting = False
    threads: list[Path] = []
    listed = 0.0
    while procs.alive(daemon) and (now := time.monotonic()) < until:
        if now - listed > _TREE_EVERY_S:
            threads = [t / "wchan" for p in procs.tree(pid) for t in _tasks(p)]
            listed = now
        seen = time.time()
        if any(_wchan(t) == _WAITING for t in threads):
            if waiting:
                runs[-1][1] = seen
            else:
                runs.append([seen, seen])
            waiting = True
        else:
            waiting = False
        time.sleep(EVERY_S)
    return runs


def waits(images: Path, within_s: float = 2.0) -> tuple[tuple[float, float], ...]:
    """The watcher's runs in ``images`` as (start, ms), waiting ``within_s`` for it to
    finish; none if no watcher ran there or it did not finish."""
    if not (images / DAEMON_PID).exists():
        return ()
    deadline = time.monotonic() + within_s
    while not (images / WAITS).exists():
        if time.monotonic() > deadline:
            return ()
        time.sleep(0.02)
    try:
        runs = json.loads((images / WAITS).read_text())
        return tuple((round(s, 6), round((e - s) * 1000, 1)) for s, e in runs)
    except (OSError, ValueError, TypeError):
        return ()


def _tasks(pid: int) -> list[Path]:
    with contextlib.suppress(OSError):
        return list(Path(f"/proc/{pid}/task").iterdir())
    return []


def _wchan(path: Path) -> str:
    try:
        with open(path, "rb", buffering=0) as f:
            return f.read(64).decode(errors="replace")
    except OSError:  # that thread exited
        return ""
