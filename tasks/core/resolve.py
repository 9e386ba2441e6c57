"""Settling a split container by hand: keep one copy, kill the others.

A rollback whose destination never answered ends FAILED with "a copy may
remain on <dst>; the source stays frozen on <src>"; one whose source could
not be resumed ends FAILED too (tasks.core.machine); a Redis that restarted
without its data forgets the migrations in flight, and a source frozen by
one stays frozen. Only an operator can tell which copy should live
(docs/operating.md, "A failed migration"). ``ferry resolve`` (tasks.api.client.Ferry.resolve)
does what they decide, in the one safe order, which this module works out:

1. every other node's live copy is killed; every node that could hold one
   must answer, unless ``force``: the operator vouches that the silent
   nodes run no copy (off, or wiped) and will not start one when back;
2. the kept copy is continued if it is frozen (a running one is left alone);
3. a migration's record stays FAILED, and says what was done.

The kept copy must be in its node's inventory, running or frozen, and that
node must answer: nothing is killed unless a copy to keep is there, and two
copies never run at once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from tasks.core.migration import Migration, State
from workers.errors import BadRequest, NodeUnavailable

LIVE = ("running", "frozen")


@dataclass(frozen=True)
class Settle:
    """What ``ferry resolve`` does: continue the copy on ``keep``, kill those on ``kill``."""

    keep: str
    kill: tuple[str, ...]
    note: str


def decide(
    container: str,
    keep: str,
    copies: Mapping[str, str | None],
    alive: Mapping[str, bool],
    force: bool = False,
) -> Settle:
    """Pure: which node's copy of ``container`` to keep, the state of its copy on each
    node that may hold one (None: none) and whether each answers -> what to do, or
    BadRequest / NodeUnavailable (nothing is done)."""
    if not alive.get(keep, False):
        raise NodeUnavailable(
            f"{keep} does not answer: its copy of {container} cannot be "
            "checked or continued; bring it back, or keep another copy"
        )
    if copies.get(keep) not in LIVE:
        raise BadRequest(
            f"{keep} holds no live copy of {container} "
            f"({copies.get(keep) or 'none'}): keep another one"
        )
    others = sorted(n for n in copies if n != keep)
    silent = [n for n in others if not alive.get(n, False)]
    if silent and not force:
        raise NodeUnavailable(
            f"{', '.join(silent)} does not answer, so a copy of {container} there cannot be "
            f"killed; if you are sure it runs none (it is off, or wiped), add --force"
        )
    kill = tuple(n for n in others if n not in silent and copies.get(n) in LIVE)
    note = f"resolved by hand: kept the copy on {keep}"
    note += f", killed the one on {', '.join(kill)}" if kill else ""
    if silent:
        note += (
            f"; {', '.join(silent)} did not answer (--force: it must not run a copy "
            "when it comes back)"
        )
    elif not kill:
        note += f"; {', '.join(others) or 'no other node'} held none"
    return Settle(keep, kill, note)


def keep_node(m: Migration, keep: str) -> str:
    """The node of ``keep`` (source, destination) in a FAILED migration ``m``."""
    if m.state is not State.FAILED:
        hint = "" if m.state.final else ": `ferry cancel` rolls a running one back"
        raise BadRequest(
            f"{m.id} is {m.state.value}; only a failed migration is resolved by hand{hint}"
        )
    if keep not in ("source", "destination"):
        raise BadRequest(f"bad --keep {keep!r} for a migration: use source or destination")
    return m.src if keep == "source" else m.dst
