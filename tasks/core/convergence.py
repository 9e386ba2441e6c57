"""The pre-copy stop rule: after each pass, go on, do the final dump, or fall back.

Pure: numbers in, a decision out. The coordinator records one
:class:`IterationStats` per finished pass and calls :func:`decide`.

Rules, first match wins (``rule`` names the one that fired; ``reason`` starts
with it):

``downtime``        expected downtime <= ``downtime_limit_ms``: FinalDump.
``floor``           hard cap only: dump + restore alone exceed the limit, so no
                    pass can help: FallBack(to=fallback).
``goal``            share of pages unchanged >= ``goal_unchanged`` (LXD's
                    ``migration.incremental.memory.goal``): FinalDump.
``min-pages``       the pass wrote <= ``min_pages`` pages (p.haul): FinalDump.
``max-iterations``  ``max_iterations`` passes done: FinalDump, or FallBack when
                    the cap is hard (the downtime is over the limit here).
``growth``          the dirty set grew > ``max_growth`` over its previous pass
                    two passes running (p.haul's grow rate): FallBack.
``saturated``       from pass 2 on, the pass resent >= ``saturation`` of all
                    pages: the workload rewrites its memory faster than a pass
                    goes round, so every pass is a full copy: FallBack.
``stalled``         from pass 3 on, the dirty set shrank by less than
                    ``min_shrink`` two passes running: more passes cannot lower
                    the downtime (a hot set larger than the goal allows): FallBack.
``dirty-rate``      the workload dirties memory at least as fast as the link
                    sends it: FallBack.
``freeze``          none of the above, but the last pass's own freeze exceeded the
                    limit (a delta pass is a full dump): another pass would pause the
                    workload as long again: FallBack instead of another pass.
``continue``        none of the above: run another pass.

Under a hard cap, ``goal`` and ``min-pages`` stop only when the expected
downtime is within the limit (which ``downtime`` already caught), so they
become ``continue`` and the run ends at ``max-iterations`` or falls back.
``FallBack(to="cold")`` means "final dump now, over the limit, with a warning".

Bytes left for the final dump: the memory dirtied during the last pass,
``dirty_rate_bps * seconds`` (soft-dirty is reset when a pass starts, so this
is what the next dump must carry), capped at the whole memory. It predicts the
next pass, where the last pass's ``pages_written`` lags one pass behind, and it
is in bytes, so it holds for 16 KiB-page kernels (Raspberry Pi 5) too.
All ``*_bps`` are bytes per second.

Worked example (defaults: 300 ms limit, goal 70 %, 10 passes)::

    >>> est = Estimates(dump_ms=80, restore_ms=120, bandwidth_bps=100e6)
    >>> p1 = IterationStats(1, 131072, 131072, 0, 536870912, 5.4, 0, 20e6)
    >>> decide([p1], Limits(), est).rule   # 108 MB left: 1280 ms > 300 ms
    'continue'
    >>> p2 = IterationStats(2, 131072, 26000, 105072, 106496000, 1.1, 0, 8e6)
    >>> d = decide([p1, p2], Limits(), est)  # 8.8 MB left: 88 + 200 ms
    >>> d.rule, round(d.expected_downtime_ms)
    ('downtime', 288)
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

from workers.errors import BadRequest

Fallback = Literal["postcopy", "cold", "abort"]
Rule = Literal[
    "downtime",
    "floor",
    "freeze",
    "goal",
    "min-pages",
    "max-iterations",
    "growth",
    "saturated",
    "stalled",
    "dirty-rate",
    "continue",
]
FALLBACKS: tuple[str, ...] = ("postcopy", "cold", "abort")


@dataclass(frozen=True)
class IterationStats:
    """One finished pre-copy pass."""

    iteration: int  # 1-based
    pages_total: int
    pages_written: int  # sent this pass
    pages_unchanged: int  # skipped: unchanged since the previous pass
    bytes_sent: int
    seconds: float  # wire time of this pass
    freeze_ms: float  # this pass's own freeze (a full dump per pass for "delta")
    dirty_rate_bps: float  # bytes dirtied per second over this pass


@dataclass(frozen=True)
class Limits:
    max_iterations: int = 10  # passes, final dump not counted
    goal_unchanged: float = 0.70
    downtime_limit_ms: float = 300.0
    min_pages: int = 64
    max_growth: float = 0.10
    saturation: float = 0.90  # share of all pages one pass may resend before pre-copy gives up
    min_shrink: float = 0.10  # the dirty set must shrink this much per pass to be worth another
    fallback: Fallback = "postcopy"
    hard_downtime_cap: bool = False

    def __post_init__(self) -> None:
        if not _whole(self.max_iterations) or self.max_iterations < 1:
            raise BadRequest(
                f"max_iterations must be a whole number >= 1, not {self.max_iterations!r}"
            )
        # Written so that NaN fails each test (every comparison with NaN is false).
        if not 0.0 < self.goal_unchanged <= 1.0:
            raise BadRequest(f"goal_unchanged must be in (0, 1], not {self.goal_unchanged!r}")
        if not 0.0 < self.downtime_limit_ms < math.inf:
            raise BadRequest(
                f"downtime_limit_ms must be a finite number > 0, not {self.downtime_limit_ms!r}"
            )
        if not _whole(self.min_pages) or self.min_pages < 0:
            raise BadRequest(f"min_pages must be a whole number >= 0, not {self.min_pages!r}")
        if not 0.0 <= self.max_growth < math.inf:
            raise BadRequest(f"max_growth must be a finite number >= 0, not {self.max_growth!r}")
        if not 0.0 < self.saturation <= 1.0 or not 0.0 <= self.min_shrink < 1.0:
            raise BadRequest(
                f"saturation must be in (0, 1] and min_shrink in [0, 1), not "
                f"{self.saturation!r} and {self.min_shrink!r}"
            )
        if self.fallback not in FALLBACKS:
            raise BadRequest(f"fallback must be one of {', '.join(FALLBACKS)}")
        if self.hard_downtime_cap and self.fallback == "cold":
            # cold stops the container for the whole copy: it cannot honour a cap
            raise BadRequest("a hard downtime cap cannot fall back to cold: use postcopy or abort")


def _whole(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


@dataclass(frozen=True)
class Estimates:
    dump_ms: float  # final dump, measured or estimated
    restore_ms: float
    bandwidth_bps: float  # measured, bytes per second
    page_size: int = 4096  # 16384 on Raspberry Pi 5 kernels


@dataclass(frozen=True)
class Continue:
    reason: str
    expected_downtime_ms: float
    rule: Rule = "continue"


@dataclass(frozen=True)
class FinalDump:
    reason: str
    expected_downtime_ms: float
    rule: Rule


@dataclass(frozen=True)
class FallBack:
    to: Fallback
    reason: str
    expected_downtime_ms: float
    rule: Rule


Decision = Continue | FinalDump | FallBack


def expected_downtime_ms(bytes_left: float, est: Estimates) -> float:
    """Freeze-to-running time if the final dump carried ``bytes_left`` bytes."""
    if bytes_left < 0 or est.bandwidth_bps < 0 or est.dump_ms < 0 or est.restore_ms < 0:
        raise BadRequest("bytes, bandwidth, dump and restore times must be >= 0")
    if bytes_left == 0:
        wire = 0.0
    elif est.bandwidth_bps == 0:
        wire = math.inf
    else:
        wire = bytes_left / est.bandwidth_bps * 1000.0
    return wire + est.dump_ms + est.restore_ms


def bytes_left(last: IterationStats, page_size: int = 4096) -> float:
    """Bytes the final dump would carry after ``last``: see the module docstring."""
    return min(last.dirty_rate_bps * last.seconds, float(last.pages_total * page_size))


def unchanged_share(s: IterationStats) -> float:
    """Share of the pass's pages that were unchanged since the previous pass."""
    return s.pages_unchanged / s.pages_total if s.pages_total else 1.0


def growth(prev: IterationStats, cur: IterationStats) -> float:
    """Relative growth of the dirty set from ``prev`` to ``cur`` (p.haul's grow rate)."""
    if prev.pages_written == 0:
        return math.inf if cur.pages_written else 0.0
    return (cur.pages_written - prev.pages_written) / prev.pages_written


def changed_share(s: IterationStats) -> float:
    """Share of all pages the pass sent again."""
    return s.pages_written / s.pages_total if s.pages_total else 0.0


def decide(history: Sequence[IterationStats], limits: Limits, est: Estimates) -> Decision:
    """Decide what follows the last pass in ``history`` (oldest first)."""
    _check(history)
    last = history[-1]
    # The final dump is no faster than a pass's own freeze (a full dump for "delta").
    est = replace(est, dump_ms=max(est.dump_ms, last.freeze_ms))
    left = bytes_left(last, est.page_size)
    down = expected_downtime_ms(left, est)
    cap = limits.downtime_limit_ms
    hard = limits.hard_downtime_cap
    passes = last.iteration
    share = unchanged_share(last)
    numbers = f"expected downtime {down:.0f} ms ({left / 1e6:.1f} MB left)"

    def final(rule: Rule, why: str) -> FinalDump:
        return FinalDump(f"{rule}: {why}; {numbers}", down, rule)

    def fall(rule: Rule, why: str) -> FallBack:
        return FallBack(limits.fallback, f"{rule}: {why}; {numbers}", down, rule)

    if down <= cap:
        return final("downtime", f"expected downtime {down:.0f} ms <= limit {cap:g} ms")
    floor = est.dump_ms + est.restore_ms
    if hard and floor > cap:
        return fall("floor", f"dump + restore alone take {floor:.0f} ms > hard cap {cap:g} ms")
    if share >= limits.goal_unchanged and not hard:
        return final("goal", f"{share:.0%} of pages unchanged >= goal {limits.goal_unchanged:.0%}")
    if last.pages_written <= limits.min_pages and not hard:
        return final(
            "min-pages", f"pass {passes} wrote {last.pages_written} <= {limits.min_pages} pages"
        )
    if passes >= limits.max_iterations:
        why = f"{passes} of {limits.max_iterations} passes done"
        if hard:
            return fall("max-iterations", f"{why}, downtime over the hard cap {cap:g} ms")
        return final("max-iterations", why)
    # The dirty set's change over the last two passes (none before pass 3).
    g1, g2 = (
        (growth(history[-3], history[-2]), growth(history[-2], last))
        if len(history) >= 3
        else (-math.inf, -math.inf)
    )
    if min(g1, g2) > limits.max_growth:
        return fall(
            "growth", f"dirty set grew {g1:.0%} then {g2:.0%} (> {limits.max_growth:.0%} twice)"
        )
    if passes >= 2 and changed_share(last) >= limits.saturation:
        return fall(
            "saturated",
            f"pass {passes} resent {changed_share(last):.0%} of all pages "
            f"(>= {limits.saturation:.0%}): every pass is a full copy",
        )
    if min(g1, g2) > -limits.min_shrink:
        return fall(
            "stalled",
            f"dirty set changed {g1:+.0%} then {g2:+.0%}: shrinking less "
            f"than {limits.min_shrink:.0%} a pass",
        )
    if last.dirty_rate_bps >= est.bandwidth_bps:
        return fall(
            "dirty-rate",
            f"dirty rate {last.dirty_rate_bps / 1e6:.1f} MB/s >= "
            f"bandwidth {est.bandwidth_bps / 1e6:.1f} MB/s",
        )
    if last.freeze_ms > cap:
        return fall(
            "freeze",
            f"pass {passes} froze the tree {last.freeze_ms:.0f} ms > limit {cap:g} ms: "
            "another pass would pause it as long",
        )
    return Continue(
        f"continue: {numbers} > limit {cap:g} ms, {share:.0%} unchanged "
        f"(goal {limits.goal_unchanged:.0%}), pass {passes} of {limits.max_iterations}",
        down,
    )


def _check(history: Sequence[IterationStats]) -> None:
    if not history:
        raise BadRequest("decide() needs at least one finished pass")
    for prev, cur in itertools.pairwise(history):
        if cur.iteration != prev.iteration + 1:
            raise BadRequest(f"pass {cur.iteration} follows pass {prev.iteration}: not consecutive")
    for s in history:
        if s.iteration < 1 or min(s.pages_total, s.pages_written, s.pages_unchanged) < 0:
            raise BadRequest(f"pass {s.iteration}: iteration >= 1 and page counts >= 0")
        if s.pages_unchanged > s.pages_total:
            raise BadRequest(f"pass {s.iteration}: more pages unchanged than total")
        if min(s.bytes_sent, s.seconds, s.freeze_ms, s.dirty_rate_bps) < 0:
            raise BadRequest(f"pass {s.iteration}: bytes, times and rates must be >= 0")
