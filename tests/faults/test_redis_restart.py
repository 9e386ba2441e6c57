"""Redis restarts mid-migration (kill -9, then started on the same append-only
data): the container is never lost or duplicated, every migration ends DONE
or ROLLED_BACK, and its record says Redis restarted.

The suite runs its own Redis (tests.faults.cluster.PrivateRedis), never the
machine's: the shared test Redis keeps nothing on disk and other test runs
use it.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest

from tests.conftest import criu_works, need, running
from tests.faults.cluster import NODES, REDIS, FaultCluster, PrivateRedis, outcome, said
from tests.faults.conftest import fault_env
from tests.faults.inject import restart_redis_in
from tests.integration.helpers import dirtying, ticks, wait_for
from workers.errors import BadRequest

pytestmark = pytest.mark.criu


@pytest.fixture(scope="module")
def restartable(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[FaultCluster, PrivateRedis]]:
    ok, why = criu_works()
    need(ok, why)
    base = tmp_path_factory.mktemp("redis-restart")
    rds = PrivateRedis(base / "redis")
    rds.start()
    c = FaultCluster(base, fault_env(rds.url, str(base / "failpoints")))
    c.disarm()
    try:
        with running(c, list(NODES)):
            yield c, rds
    finally:
        if rds.proc is not None and rds.proc.poll() is None:
            rds.kill()


@pytest.mark.parametrize("strategy,point", [(s, p) for s, points in REDIS.items() for p in points])
def test_a_redis_restart_in_a_phase_loses_nothing(restartable, strategy: str, point: str) -> None:
    c, rds = restartable
    name = f"r-{strategy}-{point.split(':')[0]}"
    info = c.client.run("f1", [sys.executable, "-u", "-c", dirtying(16)], name=name)
    wait_for(lambda: len(ticks(info["log"])) > 5)
    c.arm(point)
    try:
        handle = c.client.migrate(name, "f2", strategy=strategy)
        restart_redis_in(c, rds, handle.id, point)
        handle.wait(timeout=180)
    finally:
        c.disarm()
        if not rds.answers():
            rds.start()
    print(
        f"{strategy:8} redis restart at {point:22} -> "
        f"{outcome(c, name, info['log'], handle.id, said('(Redis) restarted'))}"
    )
    c.client.kill(name)


@pytest.mark.parametrize(
    "point,survivor", [("transfer:pause-before", "f1"), ("restore:pause-after", "f2")]
)
def test_a_redis_that_lost_its_data_leaves_one_copy_for_resolve(
    restartable, point: str, survivor: str
) -> None:
    """Redis restarts empty (no AOF) inside the freeze window: the records are gone.

    Nothing is lost and nothing runs twice: the source stays frozen (no record
    says resume it) and a restored copy runs on; the nodes drop the images of
    the migration they no longer know. `ferry resolve NAME --keep NODE` then
    keeps the copy ``ferry ps`` shows (frozen on f1, or running on f2) and
    kills the other.
    """
    c, rds = restartable
    name = f"r-lost-{point.split(':')[0]}"
    info = c.client.run("f1", [sys.executable, "-u", "-c", dirtying(16)], name=name)
    wait_for(lambda: len(ticks(info["log"])) > 5)
    c.arm(point)
    try:
        handle = c.client.migrate(name, "f2", strategy="cold")
        restart_redis_in(c, rds, handle.id, point, keep_data=False)
    finally:
        c.disarm()
    with pytest.raises(BadRequest, match="no migration"):
        c.client.status(handle.id)
    c.wait_ready(list(NODES))  # the nodes and the coordinator registered again
    wait_for(lambda: not c.leftovers(handle.id), timeout=20)
    states = {k["node"]: k["state"] for k in c.client.containers() if k["name"] == name}
    assert states[survivor] in ("running", "frozen") and len(c.copies(name)) <= 1, states
    s = c.client.resolve(name, survivor)
    assert s.keep == survivor and s.kill == tuple(n for n in states if n != survivor)
    assert len(c.copies(name)) == 1
    before = max(ticks(info["log"]))
    wait_for(lambda: max(ticks(info["log"])) > before + 5, timeout=20)
    print(f"redis lost its data at {point}: {states}; {s.note}")
    c.client.kill(name)
