"""Cancel rolls a migration back cleanly before its point of no return, and
says it is too late after it."""

from __future__ import annotations

import sys

import pytest

from tests.integration.helpers import assert_went_on, dirtying, ticks, wait_for
from workers.errors import BadRequest, TooLate

pytestmark = pytest.mark.criu


def test_cancel_during_precopy_rolls_back_and_the_source_goes_on(faults) -> None:
    client = faults.client
    info = client.run("f1", [sys.executable, "-u", "-c", dirtying(128, stride=2)], name="f-cancel")
    wait_for(lambda: len(ticks(info["log"])) > 3)
    handle = client.migrate(
        "f-cancel",
        "f2",
        strategy="delta",
        max_iterations=10,
        goal_unchanged=1.0,
        downtime_limit_ms=1,
    )
    wait_for(
        lambda: str(handle.status().phase) in ("Phase.PRECOPY", "Phase.REBUILD"),
        timeout=30,
        every=0.01,
    )
    client.cancel(handle.id)
    m = handle.wait(timeout=60)
    assert m.state.value == "rolled_back" and "cancelled by request" in " ".join(m.errors)
    assert faults.copies("f-cancel") == [info["pid"]], "the source copy must be the one running"
    before = max(ticks(info["log"]))
    wait_for(lambda: max(ticks(info["log"])) >= before + 8)
    assert_went_on(ticks(info["log"]), before)
    wait_for(lambda: not faults.leftovers(handle.id), timeout=10)
    with pytest.raises(BadRequest, match="already rolled_back"):
        client.cancel(handle.id)
    client.kill("f-cancel")


def test_cancel_after_the_point_of_no_return_is_too_late(faults) -> None:
    client = faults.client
    info = client.run("f1", [sys.executable, "-u", "-c", dirtying(8)], name="f-late")
    wait_for(lambda: len(ticks(info["log"])) > 3)
    faults.arm("cleanup:kill-before")  # hold the migration in CLEANUP for a while
    try:
        handle = client.migrate("f-late", "f2", strategy="cold")
        wait_for(lambda: handle.status().past_no_return, timeout=30, every=0.01)
        with pytest.raises(TooLate, match="point of no return"):
            client.cancel(handle.id)
        assert handle.wait(timeout=60).state.value == "done"
    finally:
        faults.disarm()
    client.kill("f-late")
