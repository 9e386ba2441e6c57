"""Failpoints: make a node misbehave at a chosen phase, for the fault suite.

With ``FERRY_FAILPOINTS=/path/to/file`` set, a worker reads that file before
and after each phase, and the node's data plane reads it as it sends pages
and receives files. Lines:

- ``dump:kill-after`` (or ``restore:kill-before``, ...): the worker running
  that phase SIGKILLs itself there, once per migration: what a crash, an OOM
  kill or a power cut looks like to the rest of the cluster.
- ``transfer:pause-before`` (or any phase, ``-after``): the worker stops
  there, once per migration, until the fault suite releases it
  (:func:`release`), so the suite can break something else (restart Redis)
  while the phase is held or runs.
- ``receive:corrupt``: the receiver flips one byte of the first block of a
  migration's first file as it arrives, once per migration, as a bad NIC or
  cable would.
- ``pages:corrupt``: flips one byte of every pages stream the node sends,
  after it was hashed (:mod:`workers.dataplane.pagestream`).

Unset (the default) in production: nothing is read.
"""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

SPEC = re.compile(r"^([a-z_]+:(kill|pause)-(before|after)|[a-z_]+:corrupt)$")
PAUSE_MAX_S = 300.0  # a held phase goes on by itself after this (a suite that died)


def armed(control: Path) -> frozenset[str]:
    """The failpoints armed in ``control`` (well-formed lines only)."""
    try:
        lines = control.read_text().split()
    except OSError:
        return frozenset()
    return frozenset(line for line in lines if SPEC.match(line))


def mark(control: Path, mid: str, point: str) -> Path:
    """The file saying ``point`` fired for ``mid`` (``dump:kill-after`` -> ``...dump.kill-after``)."""
    return control.parent / f"{control.name}.{mid}.{point.replace(':', '.')}"


def fire(control: Path | None, point: str, mid: str) -> bool:
    """Whether ``point`` is armed and has not fired for ``mid`` yet; marks it fired."""
    if control is None or point not in armed(control):
        return False
    try:
        os.close(os.open(mark(control, mid, point), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except FileExistsError:
        return False
    return True


def hit(control: Path | None, phase: str, when: str, mid: str) -> None:
    """Die (or wait to be released) here if ``phase:kill-<when>`` (``pause-``) is armed."""
    if fire(control, f"{phase}:kill-{when}", mid):
        os.kill(os.getpid(), signal.SIGKILL)
    point = f"{phase}:pause-{when}"
    if control is not None and fire(control, point, mid):
        go = Path(f"{mark(control, mid, point)}.go")
        deadline = time.monotonic() + PAUSE_MAX_S
        while not go.exists() and time.monotonic() < deadline:
            time.sleep(0.02)


def release(control: Path, mid: str, point: str) -> None:
    """Let a phase held at ``point`` for ``mid`` go on."""
    Path(f"{mark(control, mid, point)}.go").touch()


def corrupting(control: Path | None, stream: str) -> bool:
    """Whether ``stream:corrupt`` is armed (every stream, not once per migration)."""
    return control is not None and f"{stream}:corrupt" in armed(control)
