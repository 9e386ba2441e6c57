"""ferry's errors, one tree.

    FerryError                      base: every error ferry raises on purpose
    ├── TransientError              worth retrying (backoff, within a budget)
    │   ├── NodeUnavailable         a node's worker or listener does not answer
    │   └── TransferError           the data plane dropped or stalled
    └── PermanentError              roll back now, retrying will not help
        ├── BadRequest              bad input: nothing was changed
        │   ├── UnknownNode
        │   └── UnknownContainer
        ├── CapabilityError         the node cannot do what was asked
        ├── TokenError              a data-plane token is wrong, expired or replayed
        ├── IntegrityError          bytes arrived but do not match their checksum
        ├── NoSpace                 a node's disk is full (ENOSPC, EDQUOT)
        ├── CriuError               CRIU failed; carries op, errno and its log
        ├── CorruptRecord           a stored record does not parse: reported and skipped
        ├── Superseded              the migration moved on (cancelled, timed out) mid-step
        └── TooLate                 past the point of no return (cancel)

The CLI prints ``error: <message>`` and exits with ``exit_code``.
"""

from __future__ import annotations

import errno as _errno
import os
from pathlib import Path

EXIT_OK = 0
EXIT_FAILED = 1  # the operation ran and failed (migration rolled back, ...)
EXIT_USAGE = 2  # bad input: nothing was changed
EXIT_UNAVAILABLE = 3  # broker, node or listener unreachable
EXIT_TIMEOUT = 4  # gave up waiting


class FerryError(Exception):
    """Base of every error ferry raises on purpose."""

    exit_code = EXIT_FAILED


class TransientError(FerryError):
    """A failure that may pass: retry with backoff."""

    exit_code = EXIT_UNAVAILABLE


class NodeUnavailable(TransientError):
    """A node's worker or data-plane listener does not answer."""


class TransferError(TransientError):
    """A data-plane transfer dropped, stalled or was cut short."""


class PermanentError(FerryError):
    """A failure that retrying will not fix: roll back now."""


class BadRequest(PermanentError):
    """Bad input; nothing was changed."""

    exit_code = EXIT_USAGE


class UnknownNode(BadRequest):
    def __init__(self, node: str, known: list[str] | None = None) -> None:
        hint = f" (known: {', '.join(sorted(known))})" if known else ""
        super().__init__(f"unknown node {node!r}{hint}")
        self.node = node


class UnknownContainer(BadRequest):
    def __init__(self, name: str, where: str = "") -> None:
        at = f" on {where}" if where else ""
        super().__init__(f"unknown container {name!r}{at}: see `ferry ps`")
        self.name = name


class CapabilityError(PermanentError):
    """The node (or the pair of nodes) cannot do what was asked."""

    exit_code = EXIT_USAGE


class TokenError(PermanentError):
    """A data-plane token is wrong, expired or replayed."""


class IntegrityError(PermanentError):
    """Bytes arrived that do not match their checksum."""


class NoSpace(PermanentError):
    """A node's disk (or quota) is full: free space there, or pick another node."""


class CorruptRecord(PermanentError):
    """A record in the state store does not parse (hand-edited, truncated, another version)."""


class Superseded(PermanentError):
    """The migration moved on (cancelled, timed out, retried) while this step ran."""


class TooLate(PermanentError):
    """The migration is past its point of no return."""


class CriuError(PermanentError):
    """CRIU failed: ``dump failed: Error(3): No such process (see .../dump.log)``."""

    def __init__(self, op: str, errno: int, log: Path | str | None, detail: str = "") -> None:
        name = _errno.errorcode.get(errno, "") if errno else ""
        reason = os.strerror(errno) if errno else "CRIU exited with an error"
        what = f"Error({errno}): {reason}" if errno else reason
        tail = f": {detail}" if detail else ""
        where = f" (see {log})" if log else ""
        super().__init__(f"{op} failed: {what}{tail}{where}")
        self.op, self.errno, self.errname, self.log = op, errno, name, log
