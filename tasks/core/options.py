"""How one migration runs, beyond the stop rule's limits: fixed when it is submitted.

The stop rule's knobs are :class:`tasks.core.convergence.Limits`; everything
else a phase or the watchdog needs to know about the request lives here, typed,
instead of riding along in the limits.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Options:
    memory_bytes: int = 0  # the container's memory when it was submitted
    container_started: float | None = None  # when that container started: a restarted one is not it
    timeout_action: str = "abort"  # abort | force (push a pre-copy to its final dump)
    page_server: str = "off"  # auto | on | off: tasks.core.transport.page_server's verdict
    page_server_why: str = ""
    compression: str = "auto"  # auto | none | zstd, for image files on the data plane
    link_bps: float | None = None  # the link's rate assumed at submit (bytes/s)
    link_source: str = ""  # where link_bps came from: measured (when) or configured
    bandwidth_bps: float | None = None  # this migration's cap on the data plane, if any
    lazy_ok: bool = False  # both nodes can run post-copy (a forced finish may use it)
    dump_ms: float | None = None  # measured or expected final dump time, for the stop rule
    restore_ms: float | None = None  # likewise for the restore
    evacuation: str = ""  # the evacuation that started it: told at once when it ends
