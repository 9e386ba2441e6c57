"""The migration record and what moves it: its states and phases, the events the
phase tasks report, the sends the machine answers with, and its retry budgets.

tasks.core.machine decides with them; tasks.store.migrations stores them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from tasks.core import convergence as conv
from tasks.core.options import Options
from tasks.core.pauses import Pause
from tasks.core.strategy import Strategy


class State(str, Enum):
    PENDING = "pending"
    RUNNING = "running"
    ROLLING_BACK = "rolling_back"
    DONE = "done"
    ROLLED_BACK = "rolled_back"
    FAILED = "failed"  # rollback itself failed: the record says where the container is

    @property
    def final(self) -> bool:
        return self in (State.DONE, State.ROLLED_BACK, State.FAILED)


class Phase(str, Enum):
    PREPARE = "prepare"
    SYNC = "sync"  # the declared directories' first rsync pass, while the container runs
    PRECOPY = "precopy"  # one pass: snapshot while running, send what changed
    REBUILD = "rebuild"  # delta: the destination rebuilds the pass's images
    DUMP = "dump"  # the final dump: the tree freezes
    TRANSFER = "transfer"
    FINAL_SYNC = "final_sync"  # rsync again, inside the freeze window: what changed
    RESTORE = "restore"
    PAGES = "pages"  # post-copy: wait until every page has reached the destination
    VERIFY = "verify"
    CLEANUP = "cleanup"
    ABORT = "abort"  # rollback: destination side
    RESUME = "resume"  # rollback: source side
    FINISHED = "finished"


# phase -> (runs on "src" or "dst", through the node's urgent queue)
ROUTE: dict[Phase, tuple[str, bool]] = {
    Phase.PREPARE: ("dst", False),
    Phase.SYNC: ("src", False),
    Phase.PRECOPY: ("src", False),
    Phase.REBUILD: ("dst", False),
    Phase.DUMP: ("src", True),
    Phase.TRANSFER: ("src", True),
    Phase.FINAL_SYNC: ("src", True),
    Phase.RESTORE: ("dst", True),
    Phase.PAGES: ("src", False),
    Phase.VERIFY: ("dst", True),
    Phase.CLEANUP: ("src", False),
    Phase.ABORT: ("dst", True),
    Phase.RESUME: ("src", True),
}
# Phases after which a copy may run on the destination: roll back dst first.
DST_MAY_RUN = {Phase.RESTORE, Phase.PAGES, Phase.VERIFY}
# Phases inside the container's freeze window (before the restore resumes it).
FREEZE = {Phase.DUMP, Phase.TRANSFER, Phase.FINAL_SYNC, Phase.RESTORE}


def phases(strategy: Strategy | str, lazy: bool, sync: bool = False) -> list[Phase]:
    """The forward phases of a strategy (without the repeated PRECOPY passes)."""
    strategy = Strategy.parse(strategy)
    out = [Phase.PREPARE]
    if sync:
        out.append(Phase.SYNC)
    if strategy.iterative:
        out.append(Phase.PRECOPY)
    out += [Phase.DUMP, Phase.TRANSFER]
    if sync:
        out.append(Phase.FINAL_SYNC)
    out.append(Phase.RESTORE)
    if lazy:
        out.append(Phase.PAGES)
    return out + [Phase.VERIFY, Phase.CLEANUP]


@dataclass(frozen=True)
class Policy:
    """Retry budgets: how often a phase is tried, and the backoff between tries."""

    max_attempts: int = 3
    rollback_attempts: int = 8
    backoff_s: float = 0.5
    backoff_max_s: float = 30.0


DEFAULT_POLICY = Policy()


@dataclass(frozen=True)
class Fallback:
    """The migration changed strategy on the way: from what, to what, and why."""

    frm: str  # the strategy it ran until then
    to: str  # postcopy | cold | abort
    why: str


@dataclass(frozen=True)
class Migration:
    """The migration record, as the state machine sees it."""

    id: str
    container: str
    src: str
    dst: str
    strategy: Strategy = Strategy.COLD  # what admission chose (``asked`` may be auto)
    asked: str = ""  # the strategy the caller asked for
    lazy: bool = False  # the final dump leaves pages on the source (post-copy)
    sync: tuple[str, ...] = ()  # the container's node-local directories, synced with rsync
    limits: conv.Limits = field(default_factory=conv.Limits)  # the stop rule's knobs
    options: Options = field(default_factory=Options)  # everything else asked at submit
    state: State = State.PENDING
    phase: Phase | None = None
    attempt: int = 0
    step: int = 0
    past_no_return: bool = False
    cancelled: bool = False  # a user (or an evacuation's deadline) asked for the rollback
    rollback: tuple[Phase, ...] = ()  # rollback steps still to finish
    passes: tuple[dict[str, Any], ...] = ()  # one convergence.IterationStats per pass
    pauses: tuple[Pause, ...] = ()  # every freeze of the tree (tasks.core.pauses)
    fallbacks: tuple[Fallback, ...] = ()  # what the stop rule changed, in order
    # retry counters ("rollback stalled", "<phase> (rollback)"): never read back from errors
    retries: dict[str, int] = field(default_factory=dict)
    errors: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    reason: str = ""  # why this strategy
    mac: str = ""  # tasks.messaging.auth: the cluster secret vouches for id, container, nodes, strategy, sync
    created: float = 0.0
    updated: float = 0.0

    @property
    def path(self) -> str:
        """The strategies that ran, in order: ``delta -> postcopy``."""
        return " -> ".join([str(self.strategy), *(f.to for f in self.fallbacks)])

    def __post_init__(self) -> None:
        if not isinstance(self.strategy, Strategy):  # a name, from a caller or a test
            object.__setattr__(self, "strategy", Strategy.parse(self.strategy))


@dataclass(frozen=True)
class Event:
    """What a phase task reports (or a user asks: ``start``, ``cancel``)."""

    kind: str  # start | done | failed | cancel | timeout | stalled
    now: float
    phase: Phase | None = None
    step: int = 0
    result: dict[str, Any] = field(default_factory=dict)
    error: str = ""
    transient: bool = False


@dataclass(frozen=True)
class Send:
    """Send phase task ``phase`` (step ``step``) to ``node``."""

    phase: Phase
    node: str
    urgent: bool
    step: int
    countdown: float = 0.0
