"""``ferry migrate --strategy precopy`` on a kernel without soft-dirty: the uffd-wp tracker.

A container that checks every page of its memory every tick moves between two
real nodes; its passes never froze it, and it goes on intact on the other side.
"""

from __future__ import annotations

import sys

import pytest

from tasks.core.summary import downtime
from tests.integration.helpers import assert_went_on, bad_ticks, ticks, verifying, wait_for
from workers import procs

pytestmark = pytest.mark.criu


def test_precopy_on_the_tracker_moves_a_verifying_container(cluster) -> None:
    client = cluster.client
    src = client.node("n1").caps
    if src.dirty_tracker != "uffd-wp":
        pytest.skip(f"n1's dirty tracker is {src.dirty_tracker}, not uffd-wp")
    info = client.run("n1", [sys.executable, "-u", "-c", verifying(64, 2)], name="verifier")
    wait_for(lambda: len(ticks(info["log"])) > 5, timeout=30)
    m = client.migrate("verifier", "n2", strategy="precopy").wait(timeout=120)
    assert m.state.value == "done", m.errors
    assert m.results["precopy"]["tracker"] == "uffd-wp"  # the record names the tracker
    assert "tracker" in m.results["dump"]
    # no pass froze the tree: only the first stopped each process for two system calls
    assert all(p["freeze_ms"] < 50 for p in m.passes), m.passes
    assert all(p.phase != "precopy" or p.ms < 50 for p in m.pauses)
    split = m.results["dump"]["tracker"]
    assert split["pages_sent"] < split["pages_total"]  # the passes had sent the rest
    before = max(ticks(info["log"]))
    wait_for(lambda: max(ticks(info["log"])) >= before + 8, timeout=30)
    assert bad_ticks(info["log"]) == []  # every page it checked held what it wrote
    assert_went_on(ticks(info["log"]), before)
    assert not procs.alive(info["pid"])
    d = downtime(m)
    assert d is not None and d["downtime_ms"] > 0
    print(
        f"precopy/uffd-wp: downtime {d['downtime_ms']:.0f} ms, passes {len(m.passes)}, "
        f"dump {m.results['dump']['frozen_ms']:.0f} ms, split {split}, "
        f"transfer {m.results['transfer']['wall_ms']:.0f} ms, "
        f"restore {m.results['restore']}"
    )
    client.kill("verifier")


def uffd_wp_mappings(pid: int) -> int:
    """How many of ``pid``'s mappings are registered for uffd write-protection (``uw``)."""
    text = open(f"/proc/{pid}/smaps").read()  # noqa: PTH123, SIM115
    return sum(" uw" in ln for ln in text.splitlines() if ln.startswith("VmFlags:"))


def trackers() -> list[int]:
    out = []
    for pid in procs.tree(1):
        try:
            if b"workers.tracker" in open(f"/proc/{pid}/cmdline", "rb").read():  # noqa: PTH123, SIM115
                out.append(pid)
        except OSError:
            continue
    return out


def test_a_cancel_during_the_passes_ends_the_tracking_and_the_container_goes_on(cluster) -> None:
    client = cluster.client
    if client.node("n1").caps.dirty_tracker != "uffd-wp":
        pytest.skip("n1 has no uffd-wp tracker")
    info = client.run("n1", [sys.executable, "-u", "-c", verifying(32, 30)], name="cancelled")
    wait_for(lambda: len(ticks(info["log"])) > 5, timeout=30)
    # it never converges (30 % of its pages a tick, a 1 ms limit): the passes go on
    h = client.migrate(
        "cancelled", "n2", strategy="precopy", downtime_limit_ms=1, max_iterations=50
    )
    wait_for(lambda: len(h.status().passes) >= 2, timeout=60)
    assert uffd_wp_mappings(info["pid"]) > 0 and trackers()  # tracked while it runs
    client.cancel(h.id)
    m = h.wait(timeout=60)
    assert m.state.value == "rolled_back", (m.state, m.errors)
    wait_for(lambda: not trackers(), timeout=10)
    assert uffd_wp_mappings(info["pid"]) == 0  # its registrations went with the tracker
    before = max(ticks(info["log"]))
    wait_for(lambda: max(ticks(info["log"])) >= before + 5, timeout=30)
    assert bad_ticks(info["log"]) == []
    assert procs.alive(info["pid"])
    client.kill("cancelled")
