"""The sim runtime's model: what a simulated container costs and how it dirties memory.

Pure: numbers in, numbers out. Where each default comes from is in
docs/sim.md; in short, the dump and restore costs are fitted to real CRIU 4.1.1
on this project's 2-vCPU reference VM (docs/benchmarks/cold.json), and the
dirty rate is the middle rate of the strategies benchmark.

Dirtying: a container writes ``dirty_bps`` bytes per second, a share
``hot_writes`` of them into a hot set of ``hot_bytes`` and the rest across its
other pages, each write landing on a page chosen uniformly within its part.
The distinct pages dirtied in ``t`` seconds are then, per part of ``n`` pages
written at ``w`` pages/s, ``n * (1 - exp(-w * t / n))``: about ``w * t`` for
short intervals, never more than ``n``. Successive pre-copy passes therefore
shrink towards the hot set (plus the cold trickle of one pass), as a real
workload with a working set does:

    >>> m = SimModel()
    >>> wl = workload(m, {"sim.memory": str(64 << 20)})   # 16384 pages, 1639 of them hot
    >>> dirtied(wl, 0.0, m.hot_writes)
    (0, 0)
    >>> dirtied(wl, 0.1, m.hot_writes)                    # 0.1 s: ~ rate * t, 90 % hot
    (141, 16)
    >>> dirtied(wl, 10.0, m.hot_writes)                   # 10 s: the whole hot set and a trickle
    (1639, 1551)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from workers.errors import BadRequest

PAGE = 4096
MIB = 1 << 20


@dataclass(frozen=True)
class SimModel:
    """Costs and dirtying of simulated containers (sources: docs/sim.md)."""

    dump_fixed_ms: float = 12.0  # real CRIU freeze of an empty counter: 10-17 ms
    dump_ms_per_mb: float = 0.46  # 64 MiB 37-45 ms, 256 MiB 105-131 ms, 1 GiB 423-573 ms
    restore_fixed_ms: float = 35.0  # real criu restore of an empty counter: 34-50 ms
    restore_ms_per_mb: float = 0.65  # 64 MiB 75-89 ms, 256 MiB 194-196 ms, 1 GiB 679-734 ms
    default_memory: int = 64 * MIB
    dirty_share_per_s: float = (
        0.10  # of the memory per second: the strategies benchmark's middle rate
    )
    hot_share: float = 0.10  # of the memory: the hot set (a modelling choice, see docs/sim.md)
    hot_writes: float = 0.9  # share of the writes that land in the hot set

    def __post_init__(self) -> None:
        if (
            min(
                self.dump_fixed_ms,
                self.dump_ms_per_mb,
                self.restore_fixed_ms,
                self.restore_ms_per_mb,
                self.dirty_share_per_s,
            )
            < 0
        ):
            raise BadRequest("sim model costs and rates must be >= 0")
        if not (0.0 <= self.hot_share <= 1.0 and 0.0 <= self.hot_writes <= 1.0):
            raise BadRequest("sim hot_share and hot_writes must be in [0, 1]")


@dataclass(frozen=True)
class Workload:
    """One container's memory and dirtying, from its labels or the model's defaults."""

    memory: int  # bytes
    dirty_bps: float  # bytes written per second
    hot_bytes: int


def workload(model: SimModel, labels: dict[str, str]) -> Workload:
    """The container's workload: labels ``sim.memory``, ``sim.dirty_rate`` (bytes/s),
    ``sim.hot_set`` (bytes) override the model's defaults. BadRequest if one is bad."""

    def number(key: str, default: float) -> float:
        raw = labels.get(key)
        if raw is None:
            return default
        try:
            value = float(raw)
        except ValueError:
            raise BadRequest(f"bad {key} label {raw!r}: want a number of bytes") from None
        if not math.isfinite(value) or value < 0:
            raise BadRequest(f"bad {key} label {raw!r}: want a number of bytes >= 0")
        return value

    memory = int(number("sim.memory", model.default_memory))
    rate = number("sim.dirty_rate", model.dirty_share_per_s * memory)
    hot = int(number("sim.hot_set", model.hot_share * memory))
    if hot > memory:
        raise BadRequest(f"sim.hot_set {hot} is larger than sim.memory {memory}")
    return Workload(memory, rate, hot)


def pages(nbytes: int) -> int:
    return -(-nbytes // PAGE)


def _distinct(n: int, writes: float) -> float:
    """Expected distinct pages among ``n`` after ``writes`` uniform page writes."""
    return n * -math.expm1(-writes / n) if n else 0.0


def dirtied(wl: Workload, seconds: float, hot_writes: float) -> tuple[int, int]:
    """Distinct (hot, cold) pages dirtied in ``seconds`` of running (see the module docstring)."""
    total, hot = pages(wl.memory), min(pages(wl.hot_bytes), pages(wl.memory))
    writes = wl.dirty_bps / PAGE * max(seconds, 0.0)
    share = hot_writes if hot else 0.0
    return round(_distinct(hot, writes * share)), round(
        _distinct(total - hot, writes * (1 - share))
    )


def windows(wl: Workload, hot_cold: tuple[int, int], turn: int) -> list[tuple[int, int]]:
    """Page ranges ``[start, end)`` a snapshot stamps for ``hot_cold`` dirtied pages.

    The hot set is the first pages, the rest is cold; each part's pages are
    stamped in a window that moves on by ``turn`` (the snapshot's number), so
    the same pages are not always the ones written.
    """
    total, hot = pages(wl.memory), min(pages(wl.hot_bytes), pages(wl.memory))
    out: list[tuple[int, int]] = []
    for base, size, n in ((0, hot, hot_cold[0]), (hot, total - hot, hot_cold[1])):
        n = min(n, size)
        if n <= 0:
            continue
        start = (turn * n) % size
        end = start + n
        out.append((base + start, base + min(end, size)))
        if end > size:
            out.append((base, base + end - size))
    return out


def dump_ms(model: SimModel, memory: int) -> float:
    """The modelled freeze of a full dump."""
    return model.dump_fixed_ms + model.dump_ms_per_mb * memory / MIB


def restore_ms(model: SimModel, memory: int, lazy: bool = False) -> float:
    """The modelled restore; a lazy (post-copy) restore pulls its pages later."""
    return model.restore_fixed_ms + (0.0 if lazy else model.restore_ms_per_mb * memory / MIB)
