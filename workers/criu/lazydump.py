"""Watching a post-copy dump: when its tree froze, and until its page server has sent every page.

The dump is ``criu dump --lazy-pages`` (the criu runtime) or ``runc checkpoint
--lazy-pages`` (the oci runtime, whose CRIU writes the same ``dump.log``).
Either can be watched by a process other than the one that started it: only
the images directory is read, and the page server's port in it.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path

from workers import sockets
from workers.criu.log import explain
from workers.criu.stats import dump_stats
from workers.errors import CriuError
from workers.records import DumpStats

_SEIZED = re.compile(r"\((\d+\.\d+)\) Seized task")
PORT_FILE = "page-server.port"


def seized_at(log_text: str, started: float) -> float:
    """When the tree froze (wall clock), from a dump log begun at ``started``.

    >>> seized_at("(00.000100) Version: 4.1\\n(00.012500) Seized task 42\\n", 100.0)
    100.0125
    >>> seized_at("", 100.0)
    100.0
    """
    match = _SEIZED.search(log_text)
    return started + (float(match.group(1)) if match else 0.0)


def wait_served(
    images: Path,
    timeout_s: float,
    served: Callable[[int], None] | None,
    resumed: Callable[[], None],
) -> DumpStats:
    """Wait until the lazy dump in ``images`` has served every page; its stats.

    ``served`` hears, every quarter second, how many bytes the page server
    has sent; ``resumed`` is called when the dump failed (CRIU resumed the
    tree) before the CriuError is raised.
    """
    log = images / "dump.log"
    port = int((images / PORT_FILE).read_text())
    deadline = time.monotonic() + timeout_s
    started = told = time.monotonic()
    while time.monotonic() < deadline:
        if served is not None and time.monotonic() - told >= 0.25:
            served(sockets.bytes_sent(port))
            told = time.monotonic()
        text = log.read_text(errors="replace")
        if "Dumping finished successfully" in text:
            return dump_stats(images, (time.monotonic() - started) * 1000)
        if "Dumping FAILED" in text:
            resumed()
            errno, detail = explain(log)
            raise CriuError("lazy dump", errno, log, detail)
        time.sleep(0.01)
    raise CriuError("lazy dump", 110, log, f"pages still in flight after {timeout_s:.0f} s")
