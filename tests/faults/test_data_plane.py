"""Data-plane faults inside a migration: a dropped connection, a corrupted
block, the destination's disk full. Each ends DONE (the transfer resumed) or
ROLLED_BACK (the fault in the record), with exactly one copy running, its
counter gone on, and no image dir left.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator

import pytest

from tasks.core.migration import Migration
from tests.conftest import need
from tests.faults.cluster import FaultCluster, outcome, said
from tests.faults.inject import CAP_BPS, cut_when_sending, full_disk, resumed
from tests.integration.helpers import dirtying, ticks, wait_for

pytestmark = pytest.mark.criu


def start(c: FaultCluster, name: str) -> str:
    info = c.client.run("f1", [sys.executable, "-u", "-c", dirtying(16)], name=name)
    wait_for(lambda: len(ticks(info["log"])) > 5)
    return str(info["log"])


@pytest.mark.parametrize(
    "strategy,phase,page_server,proof",
    [
        ("cold", "transfer", "off", resumed),
        ("delta", "precopy", "off", resumed),
        # CRIU's page server cannot resume a stream: the dump fails, and CRIU lets the tree go on
        ("cold", "dump", "on", said("dump")),
    ],
)
def test_a_dropped_connection(
    faults, strategy: str, phase: str, page_server: str, proof: Callable[[Migration], bool]
) -> None:
    name = f"d-drop-{strategy}-{phase}"
    log = start(faults, name)
    handle = faults.client.migrate(
        name, "f2", strategy=strategy, bandwidth_bps=CAP_BPS, page_server=page_server
    )
    cut_when_sending(faults, handle.id, "f2", phase)
    handle.wait(timeout=120)
    print(
        f"{strategy:8} dropped connection in {phase:9} -> "
        f"{outcome(faults, name, log, handle.id, proof)}"
    )
    faults.client.kill(name)


@pytest.mark.parametrize("strategy", ["cold", "delta"])
def test_a_corrupted_block_is_never_restored(faults, strategy: str) -> None:
    name = f"d-corrupt-{strategy}"
    log = start(faults, name)
    faults.arm("receive:corrupt")
    try:
        handle = faults.client.migrate(name, "f2", strategy=strategy)
        handle.wait(timeout=120)
    finally:
        faults.disarm()
    state = outcome(faults, name, log, handle.id, said("digest does not match"))
    assert state == "rolled_back"
    print(f"{strategy:8} corrupted block -> {state}")
    faults.client.kill(name)


@pytest.fixture
def tiny_incoming(faults) -> Iterator[FaultCluster]:  # type: ignore[no-untyped-def]
    """f2's incoming images on a 4 MiB tmpfs: a 16 MiB container's images do not fit."""
    need(os.geteuid() == 0, "mounting a tmpfs for the full disk needs root")
    with full_disk(faults, "f2") as c:
        yield c


@pytest.mark.parametrize(
    "strategy,page_server", [("cold", "off"), ("delta", "off"), ("cold", "on")]
)  # streamed pages: the destination's verdict says its disk was full
def test_a_full_destination_disk_rolls_back(
    tiny_incoming: FaultCluster, strategy: str, page_server: str
) -> None:
    name = f"d-full-{strategy}-{page_server}"
    log = start(tiny_incoming, name)
    handle = tiny_incoming.client.migrate(name, "f2", strategy=strategy, page_server=page_server)
    handle.wait(timeout=120)
    try:
        state = outcome(tiny_incoming, name, log, handle.id, said("No space left"))
    finally:
        tiny_incoming.client.kill(name)
    assert state == "rolled_back"
    print(f"{strategy:8} destination disk full (page server {page_server}) -> {state}")
