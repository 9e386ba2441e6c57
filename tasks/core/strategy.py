"""The migration strategies, and what each one is.

>>> Strategy.parse("delta").iterative, Strategy.HYBRID.lazy, Strategy.PRECOPY.needs_tracker
(True, True, True)
>>> [s.value for s in Strategy if s.concrete]
['cold', 'precopy', 'delta', 'postcopy', 'hybrid']
>>> Strategy.parse("warm")
Traceback (most recent call last):
...
workers.errors.BadRequest: unknown strategy 'warm': use one of cold, precopy, delta, postcopy, hybrid, auto
"""

from __future__ import annotations

from enum import StrEnum

from workers.errors import BadRequest


class Strategy(StrEnum):
    COLD = "cold"  # stop, copy, restore
    PRECOPY = "precopy"  # pre-dumps driven by a dirty-page tracker (soft-dirty)
    DELTA = "delta"  # pre-copy without a tracker: snapshots, changed blocks only
    POSTCOPY = "postcopy"  # restore first, pull pages on fault (CRIU lazy pages)
    HYBRID = "hybrid"  # pre-copy, then post-copy
    AUTO = "auto"  # chosen per migration (tasks.core.chooser)

    @classmethod
    def parse(cls, name: object) -> Strategy:
        """The strategy called ``name``; BadRequest naming the choices otherwise."""
        if isinstance(name, str) and name in cls._value2member_map_:
            return cls(name)
        raise BadRequest(f"unknown strategy {name!r}: use one of {', '.join(STRATEGIES)}")

    @property
    def concrete(self) -> bool:
        """A strategy a migration runs (auto only chooses one)."""
        return self is not Strategy.AUTO

    @property
    def iterative(self) -> bool:
        """It copies memory in passes while the container runs."""
        return self in (Strategy.PRECOPY, Strategy.DELTA, Strategy.HYBRID)

    @property
    def lazy(self) -> bool:
        """The container runs on the destination before all its pages are there."""
        return self in (Strategy.POSTCOPY, Strategy.HYBRID)

    @property
    def needs_tracker(self) -> bool:
        """Its passes need the kernel's dirty-page tracking (soft-dirty) on the source."""
        return self in (Strategy.PRECOPY, Strategy.HYBRID)

    @property
    def parent_images(self) -> bool:
        """Its passes leave CRIU parent images (a pre-dump chain) for the final dump."""
        return self.needs_tracker


STRATEGIES: tuple[str, ...] = tuple(s.value for s in Strategy)
CONCRETE: tuple[Strategy, ...] = tuple(s for s in Strategy if s.concrete)
