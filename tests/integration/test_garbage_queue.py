"""A flood of bad messages on the node queues while a real migration runs: they are
moved aside, no worker dies or drops its broker connection, the migration finishes."""

from __future__ import annotations

import json
import sys
import threading

import pytest

from tasks.messaging.transport import DEAD_COUNT, DEAD_LETTERS
from tests.faults.inject import BAD
from tests.integration.helpers import assert_went_on, celery_workers, ticks, wait_for

pytestmark = pytest.mark.criu


def test_a_garbage_flood_is_moved_aside_and_the_migration_goes_on(cluster) -> None:
    client, r = cluster.client, cluster.client.store.r
    workers = {n: celery_workers(cluster, n) for n in ("n1", "n2")}
    assert all(len(w) == 2 for w in workers.values())  # main and urgent
    r.delete(DEAD_LETTERS, DEAD_COUNT)
    stop, pushed = threading.Event(), [0]

    def flood() -> None:
        while not stop.is_set():
            for q in ("node.n1", "node.n1.urgent", "node.n2", "node.n2.urgent"):
                r.lpush(q, BAD[pushed[0] % len(BAD)])
                pushed[0] += 1
            stop.wait(0.05)

    info = client.run(
        "n1",
        [
            sys.executable,
            "-u",
            "-c",
            "import time\ni=0\nwhile True: print('tick', i, flush=True); i+=1; time.sleep(0.05)",
        ],
        name="flooded",
    )
    wait_for(lambda: len(ticks(info["log"])) > 3)
    t = threading.Thread(target=flood, daemon=True)
    t.start()
    try:
        for to in ("n2", "n1"):
            m = client.migrate("flooded", to, strategy="cold").wait(timeout=180)
            assert m.state.value == "done", m.errors
    finally:
        stop.set()
        t.join(10)
    before = max(ticks(info["log"]))
    wait_for(lambda: max(ticks(info["log"])) > before + 3)
    assert_went_on(ticks(info["log"]), before)
    wait_for(lambda: int(r.get(DEAD_COUNT) or 0) >= pushed[0], timeout=30)
    # no Celery worker of either node died or was restarted
    assert {n: celery_workers(cluster, n) for n in ("n1", "n2")} == workers
    entry = json.loads(r.lindex(DEAD_LETTERS, 0))
    assert entry["queue"].startswith("node.n") and entry["why"] and entry["raw_b64"]
    client.kill("flooded")
