"""A node's uplink: one budget over its worker processes, a frozen container's bytes first.

Each Uplink below opens the file on its own, as each worker process does.
Only lower bounds on time are checked: a budget can only make a sender wait.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from workers.dataplane.throttle import URGENT_HOLD_S, Uplink
from workers.errors import BadRequest


def test_the_urgent_slot_goes_first_and_the_others_wait_for_it(tmp_path: Path) -> None:
    urgent = Uplink(tmp_path / "uplink", 1e9, urgent=True)
    main = Uplink(tmp_path / "uplink", 1e9, urgent=False)
    claimed = time.monotonic()
    urgent.take(1000)
    main.take(1000)  # a pass of another container: waits out the frozen one's claim
    assert time.monotonic() >= claimed + URGENT_HOLD_S
    main.take(1000)  # the claim is over: no wait for it (and none asserted)
    urgent.take(1000)  # never waits for the others' claim: they have none


def test_the_budget_is_one_for_every_process_of_the_node(tmp_path: Path) -> None:
    rate, burst, each = 20e6, 64 * 1024, 1_000_000
    senders = [Uplink(tmp_path / "uplink", rate, urgent=False, burst=burst) for _ in range(3)]

    def send(u: Uplink) -> None:
        for _ in range(each // burst + 1):
            u.take(burst)

    started = time.monotonic()
    threads = [threading.Thread(target=send, args=(u,)) for u in senders]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    sent = 3 * (each // burst + 1) * burst
    assert time.monotonic() - started >= (sent - burst) / rate  # 3 MB at 20 MB/s, not 3 x 20


def test_a_bad_rate_is_refused(tmp_path: Path) -> None:
    with pytest.raises(BadRequest):
        Uplink(tmp_path / "uplink", 0, urgent=False)
