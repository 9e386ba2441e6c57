"""Failpoints: make a node worker die at a chosen phase, for the fault suite.

With ``FERRY_FAILPOINTS=/path/to/file`` set, a worker reads that file before
and after each phase; a line ``dump:kill-after`` (or ``restore:kill-before``,
...) makes the worker running that phase SIGKILL itself there, once per
migration: what a crash, an OOM kill or a power cut looks like to the rest of
the cluster. A line ``pages:corrupt`` flips one byte of every pages stream the
node sends, after it was hashed (:mod:`workers.pagestream`): what a bad link
or a bad NIC looks like. Unset (the default) in production: nothing is read.
"""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

SPEC = re.compile(r"^[a-z_]+:(kill-before|kill-after|corrupt)$")


def armed(control: Path) -> frozenset[str]:
    """The failpoints armed in ``control`` (well-formed lines only)."""
    try:
        lines = control.read_text().split()
    except OSError:
        return frozenset()
    return frozenset(line for line in lines if SPEC.match(line))


def hit(control: Path | None, phase: str, when: str, mid: str) -> None:
    """Die here if ``phase:kill-<when>`` is armed and has not fired for ``mid`` yet."""
    if control is None or f"{phase}:kill-{when}" not in armed(control):
        return
    mark = control.parent / f"{control.name}.{mid}.{phase}.{when}"
    try:
        os.close(os.open(mark, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except FileExistsError:
        return
    os.kill(os.getpid(), signal.SIGKILL)


def corrupting(control: Path | None, stream: str) -> bool:
    """Whether ``stream:corrupt`` is armed."""
    return control is not None and f"{stream}:corrupt" in armed(control)
