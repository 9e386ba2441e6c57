"""What a failed CRIU call's log says went wrong: its first real error line."""

from __future__ import annotations

from pathlib import Path

from workers.criu.log import explain

LOG = """(00.032097) Error (criu/util.c:1533): rlimit: Can't setup RLIMIT_NOFILE for self: Operation not permitted
(00.063499) Error (criu/page-xfer.c:191): page-xfer: Can't write pages to socket: Broken pipe
(00.064033) Error (criu/cr-dump.c:2111): Dumping FAILED.
"""


def test_the_harmless_rlimit_line_is_not_the_reason(tmp_path: Path) -> None:
    log = tmp_path / "dump.log"
    log.write_text(LOG)
    assert explain(log) == (0, "page-xfer: Can't write pages to socket: Broken pipe")
