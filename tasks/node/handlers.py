"""The phase table: which function runs each phase on a node."""

from __future__ import annotations

from tasks.core.migration import Phase
from tasks.node import passes, phases, syncpasses
from tasks.node.context import Handler

HANDLERS: dict[Phase, Handler] = {
    Phase.PREPARE: phases.prepare,
    Phase.SYNC: syncpasses.sync,
    Phase.PRECOPY: passes.precopy,
    Phase.REBUILD: passes.rebuild,
    Phase.DUMP: phases.dump,
    Phase.TRANSFER: phases.transfer,
    Phase.FINAL_SYNC: syncpasses.final_sync,
    Phase.RESTORE: phases.restore,
    Phase.PAGES: phases.pages,
    Phase.VERIFY: phases.verify,
    Phase.CLEANUP: phases.cleanup,
    Phase.ABORT: phases.abort,
    Phase.RESUME: phases.resume,
}
