"""What a killed worker leaves in Redis: the task it had taken stays in Kombu's
``unacked`` hash (and ``unacked_index``), is put back on its queue once older
than the visibility timeout, is delivered again, found stale (the coordinator
sent that step again long before) and acknowledged: nothing is left, nothing
runs twice. SIMULATED containers (the sim runtime): the test is about the
broker's bookkeeping, on a Redis of its own (tests.faults.cluster.PrivateRedis).

The visibility timeout is 10 s here (4 h by default, longer than any phase):
Kombu's sweep restores what is older than it, in every worker, 10 s after the
worker starts and every 100 s after.
"""

from __future__ import annotations

from pathlib import Path

import redis

from tasks.core.migration import State
from tests.conftest import running
from tests.faults.cluster import FaultCluster, PrivateRedis, said
from tests.faults.conftest import fault_env
from tests.integration.helpers import wait_for


def test_a_killed_worker_s_unacked_task_comes_back_and_is_ignored(tmp_path: Path) -> None:
    rds = PrivateRedis(tmp_path / "redis")
    rds.start()
    broker = redis.Redis(unix_socket_path=str(rds.sock))
    env = {
        **fault_env(rds.url, str(tmp_path / "failpoints")),
        "FERRY_RUNTIME": "sim",
        "FERRY_VISIBILITY_TIMEOUT_S": "10",
    }
    c = FaultCluster(tmp_path, env)
    c.disarm()
    try:
        with running(c, ["f1", "f2"]) as c:
            c.client.run("f1", ["counter"], name="web", labels={"sim.memory": str(64 << 20)})
            wait_for(lambda: any(k["name"] == "web" for k in c.client.containers()))
            c.arm("dump:kill-after")  # the urgent worker of f1 SIGKILLs itself after the dump
            handle = c.client.migrate("web", "f2", strategy="cold")
            wait_for(lambda: said("restarted")(c.client.status(handle.id)), timeout=60)
            c.disarm()
            # the dead worker's task, taken and never acknowledged
            left = {k.decode() for k in broker.hkeys("unacked")}
            assert left and broker.zcard("unacked_index") == len(left)
            m = handle.wait(timeout=120)
            assert m.state in (State.DONE, State.ROLLED_BACK), m.errors

            wait_for(lambda: not broker.hkeys("unacked"), timeout=150, every=0.5)
            assert broker.zcard("unacked_index") == 0
            again = c.client.status(handle.id)
            assert (again.state, again.step, again.errors) == (m.state, m.step, m.errors)
            on = [k["node"] for k in c.client.containers() if k["name"] == "web"]
            assert on == ["f2" if m.state is State.DONE else "f1"], on
            c.client.kill("web")
    finally:
        rds.kill()
