"""`ferry resolve`: settle a FAILED migration that left a restored copy on the
destination and a frozen one on the source, as a rollback whose destination
never answered does (tasks.api.resolve). Real CRIU, real copies on both nodes.
"""

from __future__ import annotations

import sys
from dataclasses import replace

import pytest

from tasks.core.migration import Phase, State
from tests.faults.cluster import FaultCluster
from tests.integration.helpers import dirtying, ticks, wait_for
from workers import procs

pytestmark = pytest.mark.criu

WHERE = "rollback failed: a copy may remain on f2; the source stays frozen on f1"


def split(c: FaultCluster, name: str) -> tuple[dict, str]:  # type: ignore[type-arg]
    """``name`` restored and running on f2, frozen on f1, its migration FAILED as after 8 stalls."""
    info = c.client.run("f1", [sys.executable, "-u", "-c", dirtying(16)], name=name)
    wait_for(lambda: len(ticks(info["log"])) > 5)
    c.arm("verify:pause-before")
    try:
        handle = c.client.migrate(name, "f2", strategy="cold")
        wait_for(lambda: c.held(handle.id, "verify:pause-before"), timeout=60)
        c.client.store.update(
            handle.id,
            lambda m: replace(
                m, state=State.FAILED, phase=Phase.FINISHED, rollback=(), errors=(*m.errors, WHERE)
            ),
            "failed",
        )
        c.release(handle.id, "verify:pause-before")
    finally:
        c.disarm()
    states = {n: s for n, s in (("f1", "frozen"), ("f2", "running"))}
    wait_for(
        lambda: (
            {k["node"]: k["state"] for k in c.client.containers() if k["name"] == name} == states
        ),
        timeout=10,
    )
    return info, handle.id


def counting(log: str) -> None:
    """The kept copy counts on (a source kept writes over what the killed copy wrote after
    the freeze, at its own offset in the shared log: wait until it passes that)."""
    before = max(ticks(log))
    wait_for(lambda: max(ticks(log)) > before + 5, timeout=20)


def test_keeping_the_destination_kills_the_frozen_source(faults) -> None:
    info, mid = split(faults, "v-keep-dst")
    s = faults.client.resolve(mid, "destination")
    assert (s.keep, s.kill) == ("f2", ("f1",))
    m = faults.client.status(mid)
    assert (
        m.state is State.FAILED
        and m.errors[-1] == "resolved by hand: kept the copy on f2, killed the one on f1"
    )
    assert not procs.alive(info["pid"]), "the source copy still exists"
    assert len(faults.copies("v-keep-dst")) == 1
    values = ticks(info["log"])
    assert values == sorted(set(values)), "two copies ran"
    counting(info["log"])
    faults.client.kill("v-keep-dst")


def test_keeping_the_source_kills_the_destination_and_continues_the_source(faults) -> None:
    info, mid = split(faults, "v-keep-src")
    res = faults.cli("resolve", mid, "--keep", "source")
    assert res.returncode == 0, res.stderr
    assert "kept the copy on f1, killed the one on f2" in res.stdout
    assert faults.copies("v-keep-src") == [info["pid"]], "the source copy must be the one running"
    counting(info["log"])
    # Resolving again is safe: the copy kept runs, f2 holds none.
    faults.client.resolve(mid, "source")
    assert (
        faults.client.status(mid).errors[-1]
        == "resolved by hand: kept the copy on f1; f2 held none"
    )
    assert faults.copies("v-keep-src") == [info["pid"]]
    faults.client.kill("v-keep-src")


def test_resolve_refuses_what_it_cannot_do_and_changes_nothing(faults) -> None:
    info = faults.client.run("f1", [sys.executable, "-u", "-c", dirtying(8)], name="v-done")
    wait_for(lambda: len(ticks(info["log"])) > 3)
    m = faults.client.migrate("v-done", "f2", strategy="cold").wait(timeout=60)
    res = faults.cli("resolve", m.id, "--keep", "source")
    assert res.returncode == 2 and "only a failed migration is resolved by hand" in res.stderr
    res = faults.cli("resolve", m.id, "--keep", "both")
    assert res.returncode == 2 and "only a failed migration" in res.stderr
    res = faults.cli("resolve", "v-done", "--keep", "f1")
    assert res.returncode == 2 and "f1 holds no live copy of v-done" in res.stderr
    assert faults.client.status(m.id).errors == m.errors
    assert len(faults.copies("v-done")) == 1
    faults.client.kill("v-done")
