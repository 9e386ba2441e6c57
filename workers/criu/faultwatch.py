"""When a post-copy tree really waited for its pages: its threads, seen in the kernel.

The lazy-pages daemon logs a fault when it reads it, not when the thread took
it: while the daemon waits for a background chunk from the source, a fault
waits unread, and the log shows a tree that seems to run (no fault pending)
though it is stuck. Seen on the 1 Gbit/s testbed at 1 GiB: 117 ms with no
fault pending in the log and no tick of the workload, between two logged waits.

So from the restore until the daemon exits, a forked watcher looks at every
thread of the tree every :data:`EVERY_S` and notes when one sleeps in
``handle_userfault`` (its ``wchan``). Each wait, from the first sample that saw
it to the last, goes to ``lazy-waits.json`` in the images dir, and
:func:`workers.criu.log.extended` starts each of the log's stalls as early as
a wait seen leading into it.
A wait so noted is never longer than the real one: it starts at most one
sample late and ends before the real one did (whose end the log times exactly).

A kernel that shows no ``wchan`` (no kallsyms) gives no runs. Then the log's
waits are all there is, as before.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Mapping
from pathlib import Path

from workers import procs

EVERY_S = 0.002
_TREE_EVERY_S = 0.05  # how often the tree's processes are listed again
WAITS = "lazy-waits.json"
DAEMON_PID = "lazy-pages.pid"  # written by workers.criu.adapter.Criu.start_lazy_pages
_WAITING = "handle_userfault"


def start(pid: int, images: Path, most_s: float) -> int | None:
    """Fork a watcher of ``pid``'s tree until the lazy-pages daemon of ``images`` exits
    (``most_s`` at most); its pid. None when the restore had no such daemon (not
    post-copy) or no tree (pid 0: the sim runtime). The node's supervisor reaps
    it (its subreaper)."""
    (images / WAITS).unlink(missing_ok=True)
    try:
        daemon = int((images / DAEMON_PID).read_text())
    except (OSError, ValueError):
        return None
    if pid <= 0:
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
    """[start, end] (epoch seconds) of each wait for a page that a thread of ``pid``'s
    tree was seen in (:class:`Waits`), until ``daemon`` exits or ``until``."""
    seen = Waits()
    threads: list[Path] = []
    listed = 0.0
    while procs.alive(daemon) and (now := time.monotonic()) < until:
        if now - listed > _TREE_EVERY_S:
            threads = [t for p in procs.tree(pid) for t in _tasks(p)]
            listed = now
        at = time.time()
        seen.sample(at, {t: _runs(t) for t in threads if _read(t / "wchan") == _WAITING})
        time.sleep(EVERY_S)
    return sorted(seen.runs)


class Waits:
    """The waits seen in samples of a tree's threads: one wait is the samples that saw
    a thread waiting without its having run between them (its count of runs on a
    CPU unchanged), so a watcher that gets no CPU for longer than the tree's own
    sleeps never joins two waits across a tick of the tree's.

    >>> w = Waits()
    >>> w.sample(1.000, {"t1": 7})
    >>> w.sample(1.002, {"t1": 7})  # the same wait
    >>> w.sample(1.030, {"t1": 9})  # it ran meanwhile: another wait
    >>> w.sample(1.032, {})         # served
    >>> w.sample(1.034, {"t1": 9})  # a third, though its count did not change
    >>> w.runs
    [[1.0, 1.002], [1.03, 1.03], [1.034, 1.034]]
    """

    def __init__(self) -> None:
        self.runs: list[list[float]] = []
        self._open: dict[object, tuple[int, list[float]]] = {}  # thread -> its count, wait

    def sample(self, at: float, waiting: Mapping[object, int]) -> None:
        """At ``at``, the threads seen waiting, each with its count of runs."""
        was, self._open = self._open, {}
        for thread, ran in waiting.items():
            if thread in was and was[thread][0] == ran:
                was[thread][1][1] = at
                self._open[thread] = was[thread]
            else:
                self.runs.append([at, at])
                self._open[thread] = (ran, self.runs[-1])


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


def _read(path: Path) -> str:
    try:
        with open(path, "rb", buffering=0) as f:
            return f.read(128).decode(errors="replace")
    except OSError:  # that thread exited
        return ""


def _runs(thread: Path) -> int:
    """How often ``thread`` has run on a CPU (the last of its ``schedstat``); -1 on a
    kernel without it, whose samples of one thread waiting are then all one wait."""
    fields = _read(thread / "schedstat").split()
    return int(fields[2]) if len(fields) == 3 else -1
