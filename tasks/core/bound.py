"""The lower bound of an evacuation's makespan: what no schedule could beat.

Pure: the moves (:class:`Leg`: bytes that must cross, source, destination,
the freeze it cannot avoid) and the links' rates in, a :class:`Bound` out.

Every leg's bytes cross its source's uplink and its destination's downlink.
A link's rate is the fastest rate measured over it (a transfer out of, or
into, that node) where that beats the ``assumed`` rate, else the assumed
one. Why the larger: a measurement is a floor of what the link carries (a
capped or shared transfer shows less than the link), and the assumed rate a
setting that loopback or a faster NIC beats; the larger keeps the bound a
bound (an evacuation on loopback once "beat" a bound at the configured rate).

The bound is the largest of these, each a time some part of the work must
take end to end:

- per link: its bytes over its rate, plus the shortest restore among its
  legs (whichever leg's last byte crosses last still restores after it);
- per leg: its bytes over the slower of its two links, plus its own freeze
  (CRIU's frozen time in the final dump, then the restore), which its own
  bytes cannot overlap.

Worked example: two containers leave n1 (1 Gbit/s assumed; n1 -> n3 and
n4 -> n2 measured at 250 MB/s) with 0.1 s freezes, 0.05 s of it the restore::

    >>> legs = [Leg("a", "n1", "n2", 500_000_000, 0.05, 0.05),
    ...         Leg("b", "n1", "n3", 250_000_000, 0.05, 0.05)]
    >>> b = lower_bound(legs, {("n1", "n3"): 250e6, ("n4", "n2"): 250e6}, assumed_bps=125e6)
    >>> b.seconds, b.by, b.rates["up n1"], b.rates["down n2"]
    (3.05, 'up n1', 250000000.0, 250000000.0)
    >>> lower_bound([], {}, 125e6).seconds
    0.0
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from workers.errors import BadRequest


@dataclass(frozen=True)
class Leg:
    """One container's move, as the bound sees it."""

    container: str
    src: str
    dst: str
    bytes: int  # what must cross: its memory
    dump_s: float = 0.0  # CRIU's frozen time in its final dump (measured; 0: unknown)
    restore_s: float = 0.0  # its restore before it runs on (0: unknown, or a lazy restore)


@dataclass(frozen=True)
class Bound:
    seconds: float
    by: str  # what sets it: "up NODE", "down NODE" or "move CONTAINER"
    rates: dict[str, float]  # "up NODE" / "down NODE": the rate used, bytes/s


def link_rates(
    legs: Sequence[Leg], measured: Mapping[tuple[str, str], float], assumed_bps: float
) -> dict[str, float]:
    """The rate of every link the legs cross: the fastest measured over it, at least ``assumed``."""
    if not assumed_bps > 0:  # NaN too
        raise BadRequest(f"the assumed link rate must be > 0, not {assumed_bps}")
    rates: dict[str, float] = {}
    for leg in legs:
        rates[f"up {leg.src}"] = rates[f"down {leg.dst}"] = assumed_bps
    for (src, dst), bps in measured.items():
        for link in (f"up {src}", f"down {dst}"):
            if link in rates and bps > rates[link]:
                rates[link] = float(bps)
    return rates


def lower_bound(
    legs: Sequence[Leg], measured: Mapping[tuple[str, str], float], assumed_bps: float
) -> Bound:
    """The makespan no schedule of ``legs`` beats (see the module docstring)."""
    rates = link_rates(legs, measured, assumed_bps)
    if not legs:
        return Bound(0.0, "", rates)
    load: dict[str, int] = defaultdict(int)
    last: dict[str, float] = {}
    for leg in legs:
        if leg.bytes < 0 or leg.dump_s < 0 or leg.restore_s < 0:
            raise BadRequest(f"{leg.container}: bytes and freezes must be >= 0")
        for link in (f"up {leg.src}", f"down {leg.dst}"):
            load[link] += leg.bytes
            last[link] = min(last.get(link, leg.restore_s), leg.restore_s)
    terms = {link: load[link] / rates[link] + last[link] for link in load}
    for leg in legs:
        slower = min(rates[f"up {leg.src}"], rates[f"down {leg.dst}"])
        terms[f"move {leg.container}"] = leg.bytes / slower + leg.dump_s + leg.restore_s
    by = max(sorted(terms), key=lambda k: terms[k])
    return Bound(terms[by], by, rates)
