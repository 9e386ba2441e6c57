"""CRIU's logs: why a call failed, read from its log, and a log that comes through a pipe."""

from __future__ import annotations

import contextlib
import re
import subprocess
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from workers.criu import faultwatch
from workers.records import LazyReport

_ERROR_LINE = re.compile(r"Error \((?:[^)]*)\):\s*(.*)")
# Lines CRIU logs as errors and then carries on from: never the reason a call failed.
# (Raising RLIMIT_NOFILE is refused inside a user namespace or under a hard cap.)
_HARMLESS = ("rlimit: Can't setup RLIMIT_NOFILE",)
_ERRNO = re.compile(r"\b[Ee]rrno[ =:]*(\d+)|\((?:errno )?(\d+)\)$")
# CRIU's stats.proto field numbers (dump_stats_entry / restore_stats_entry).


class PipedLog:
    """A running CRIU whose log (``-o -``) comes through a pipe.

    The log is copied to ``path`` as it comes, for as long as that disk
    takes it; the error lines and the last lines stay in memory too
    (:meth:`text`), so a full disk cannot hide why CRIU failed.
    """

    _TAIL = 64  # lines kept besides the error lines

    def __init__(self, proc: subprocess.Popen[bytes], path: Path) -> None:
        self.proc = proc
        self.path = path
        self._errors: list[str] = []
        self._tail: deque[str] = deque(maxlen=self._TAIL)
        self._tap = threading.Thread(target=self._copy, daemon=True, name="criu-log")
        self._tap.start()

    def _copy(self) -> None:
        assert self.proc.stdout is not None
        try:
            out = self.path.open("wb")
        except OSError:
            out = None
        for raw in self.proc.stdout:
            if out is not None:
                try:
                    out.write(raw)
                    out.flush()
                except OSError:  # the disk is full: the lines still reach text()
                    out = None
            line = raw.decode(errors="replace").rstrip("\n")
            (self._errors if _ERROR_LINE.search(line) else self._tail).append(line)
        if out is not None:
            with contextlib.suppress(OSError):
                out.close()
        self.proc.wait()

    def wait(self, timeout: float | None = None) -> int:
        """The exit status, once CRIU has exited and its whole log is read."""
        status = self.proc.wait(timeout=timeout)
        self._tap.join(timeout=5)  # a child of CRIU's could hold the pipe open
        return status

    def kill(self) -> None:
        self.proc.kill()

    def text(self) -> str:
        """The error lines, then the last lines: enough for :func:`explain_text`."""
        return "\n".join([*self._errors, *self._tail])


def explain(log: Path, stderr: str = "") -> tuple[int, str]:
    """The errno and the first error line of a failed CRIU call's log."""
    try:
        text = log.read_text(errors="replace")
    except OSError:
        text = stderr
    return explain_text(text, stderr)


def explain_text(text: str, stderr: str = "") -> tuple[int, str]:
    """The errno and the first error line of a failed CRIU call's log ``text``.

    >>> explain_text("(00.1) Error (criu/page-xfer.c:1121): page-xfer: "
    ...              "Unable to spice data: No space left on device")
    (0, 'page-xfer: Unable to spice data: No space left on device')
    >>> explain_text("(00.1) Error (criu/cr-dump.c:1): Can't dump (errno 3)")
    (3, "Can't dump (errno 3)")
    """
    for line in text.splitlines():
        match = _ERROR_LINE.search(line)
        if match and not match.group(1).startswith(_HARMLESS):
            detail = match.group(1).strip()
            num = _ERRNO.search(detail)
            errno = int(next(g for g in num.groups() if g)) if num else 0
            return errno, detail
    return 0, (stderr.strip().splitlines() or [""])[-1]


_LAZY_PULLED = re.compile(r"UFFD transferred pages: \((\d+)/(\d+)\)")


def lazy_pages_pulled(log: Path) -> int | None:
    r"""How many pages ``criu lazy-pages`` pulled over the network, from its log (the last
    count it wrote); None if it wrote none.

    >>> import tempfile
    >>> log = Path(tempfile.mkdtemp()) / "lazy-pages.log"
    >>> _ = log.write_text("uffd: UFFD transferred pages: (10/30)\nuffd: UFFD transferred pages: (30/30)\n")
    >>> lazy_pages_pulled(log)
    30
    """
    try:
        found = _LAZY_PULLED.findall(log.read_text(errors="replace"))
    except OSError:
        return None
    return int(found[-1][0]) if found else None


# ``criu lazy-pages -v4`` logs every fault and every copy into the tree, each line
# stamped with the seconds since the daemon started:
#   (00.061758) uffd: 1-11: #PF at 0x7f092d9bb000
#   (00.062281) uffd: 1-11: uffd_copy: 0x7f092d9bb000/4096
#   (00.070001) uffd: 1-11: zero page at 0x7f092d9bc000
_LAZY_EVENT = re.compile(
    r"^\((\d+\.\d+)\) uffd: \d+-\d+: (?:#PF at 0x(?P<fault>[0-9a-f]+)"
    r"|uffd_copy: 0x(?P<copy>[0-9a-f]+)/(?P<len>\d+)|zero page at 0x(?P<zero>[0-9a-f]+))",
    re.MULTILINE,
)
STALL_GAP_S = 0.005  # fault waits closer together than this are one stall


@dataclass(frozen=True)
class FaultStalls:
    """What a post-copy restore's page faults cost the tree, from the lazy-pages log.

    ``stalls``: (start, ms) of each time the tree waited for the network —
    a run of page faults less than :data:`STALL_GAP_S` apart, from the first
    fault to the page that ended the last one, on the epoch clock; the pauses
    they make are :func:`tasks.core.pauses.joined`'s.
    """

    faults: int
    stalls: tuple[tuple[float, float], ...]


def lazy_report(images: Path, page_size: int) -> LazyReport:
    """What a post-copy restore from ``images`` pulled (its lazy-pages log) and waited for."""
    log = images / "lazy-pages.log"
    pulled = lazy_pages_pulled(log)
    try:
        text = log.read_text(errors="replace")
        started = float((images / "lazy-pages.started").read_text())
        with contextlib.suppress(OSError, ValueError):
            started = log_start(text, started, float((images / "lazy-pages.bound").read_text()))
        waits = fault_stalls(text, started)
    except (OSError, ValueError):
        waits = FaultStalls(0, ())
    size = None if pulled is None else pulled * page_size
    return LazyReport(size, waits.faults, extended(waits.stalls, faultwatch.waits(images)))


def extended(
    stalls: Sequence[tuple[float, float]],
    seen: Sequence[tuple[float, float]],
    slack_s: float = 0.005,
) -> tuple[tuple[float, float], ...]:
    """The log's ``stalls`` (start, ms), each started as early as a wait ``seen`` in the
    tree (:mod:`workers.criu.faultwatch`) that began before it and lasted until it
    began (``slack_s`` early: a wait is seen to end at most a sample before it
    did): the fault the daemon read late. A seen wait only ever extends a stall
    back: the two clocks agree to some ms, and a wait of its own between two
    stalls could join them across a gap in which the tree ran.

    >>> extended([(10.2, 50.0), (10.4, 5.0)], [(10.083, 115.0), (10.3, 20.0), (10.39, 8.0)])
    ((10.083, 167.0), (10.39, 15.0))
    """
    out = []
    for start, ms in stalls:
        early = min((s for s, w in seen if s < start <= s + w / 1000 + slack_s), default=start)
        out.append((round(early, 6), round(ms + (start - early) * 1000, 1)))
    return tuple(out)


_LISTENING = re.compile(r"^\((\d+\.\d+)\) uffd: Waiting for incoming connections", re.MULTILINE)


def log_start(text: str, before: float, bound: float) -> float:
    """When the lazy-pages daemon whose log is ``text`` started (epoch seconds), from
    ``before`` its exec and ``bound``, when its socket was first seen: less the
    time its log gives that moment (it logs once it listens). Without that line
    (or if it says the daemon started before its exec) ``before``.

    >>> log_start("(00.031758) uffd: Waiting for incoming connections on x", 100.0, 100.04)
    100.008242
    >>> log_start("(00.000035) Version: 4.1.1", 100.0, 100.04)
    100.0
    """
    found = _LISTENING.search(text)
    return max(before, round(bound - float(found[1]), 6)) if found else before


def fault_stalls(text: str, started: float) -> FaultStalls:
    """Stalls of a tree restored with lazy pages, from its ``criu lazy-pages`` log
    whose daemon started at epoch ``started``.

    >>> log = '''(00.010000) uffd: 1-11: #PF at 0x1000
    ... (00.012000) uffd: 1-11: uffd_copy: 0x1000/4096
    ... (00.013000) uffd: 1-11: #PF at 0x9000
    ... (00.020000) uffd: 1-11: uffd_copy: 0x8000/65536
    ... (00.100000) uffd: 1-11: #PF at 0x30000
    ... (00.100500) uffd: 1-11: zero page at 0x30000
    ... '''
    >>> fault_stalls(log, 1000.0)
    FaultStalls(faults=3, stalls=((1000.01, 10.0), (1000.1, 0.5)))
    """
    waiting: dict[int, float] = {}  # faulted page -> when
    stalls: list[list[float]] = []  # [start, end]
    faults = 0
    for m in _LAZY_EVENT.finditer(text):
        t = started + float(m[1])
        if m["fault"]:
            faults += 1
            waiting.setdefault(int(m["fault"], 16), t)
            continue
        lo = int(m["copy"] or m["zero"], 16)
        hi = lo + int(m["len"] or 1)
        served = [page for page in waiting if lo <= page < hi]
        for page in served:
            since = waiting.pop(page)
            if stalls and since - stalls[-1][1] < STALL_GAP_S:
                stalls[-1][1] = max(stalls[-1][1], t)
            else:
                stalls.append([since, t])
    return FaultStalls(faults, tuple((round(s, 6), round((e - s) * 1000, 1)) for s, e in stalls))
