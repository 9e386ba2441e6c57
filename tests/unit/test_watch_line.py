"""``ferry watch``'s lines say when each event happened and how many bytes its phase moved."""

from __future__ import annotations

import json
from datetime import UTC

import pytest

from tasks.core.summary import event_line


def ev(**kw: object) -> dict[str, str]:
    base = {"what": "progress", "state": "running", "phase": "transfer", "attempt": "0"}
    base.update({"t": "1764770400.25", "progress": "{}", "error": ""})
    base.update({k: v if isinstance(v, str) else json.dumps(v) for k, v in kw.items()})
    return base


@pytest.mark.parametrize(
    "event,line",
    [
        (
            ev(progress={"phase": "transfer", "bytes_sent": 3 << 20, "bytes_total": 64 << 20}),
            "14:00:00.250      running transfer  progress  3.0 MiB of 64.0 MiB",
        ),
        # the bytes of an earlier phase are not this phase's
        (
            ev(what="done", phase="restore", progress={"phase": "transfer", "bytes_sent": 9}),
            "14:00:00.250      running restore   done",
        ),
        (
            ev(what="failed", state="rolling_back", phase="dump", error="dump failed"),
            "14:00:00.250 rolling_back dump      failed    dump failed",
        ),
        (
            ev(progress={"phase": "transfer", "bytes_sent": 512}),
            "14:00:00.250      running transfer  progress  512 B",
        ),
    ],
)
def test_a_watch_line_has_the_time_and_the_bytes(event: dict[str, str], line: str) -> None:
    assert event_line(event, UTC) == line
    assert len(line) <= 80
