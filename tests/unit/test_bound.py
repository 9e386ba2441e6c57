"""The evacuation makespan's lower bound: bytes over each link's rate, plus the freezes."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tasks.core.bound import Leg, link_rates, lower_bound
from tasks.core.evacplan import report
from workers.errors import BadRequest

MB = 1_000_000


@pytest.mark.parametrize(
    "legs, measured, want, by",
    [
        # the drained node's uplink carries every byte
        ([Leg("a", "n1", "n2", 100 * MB), Leg("b", "n1", "n3", 100 * MB)], {}, 2.0, "up n1"),
        # a destination fed by two drained nodes: its downlink
        ([Leg("a", "n1", "n3", 100 * MB), Leg("b", "n2", "n3", 100 * MB)], {}, 2.0, "down n3"),
        # a measured rate faster than assumed lowers the bound (loopback beats the setting)
        ([Leg("a", "n1", "n2", 200 * MB)], {("n1", "n2"): 400e6}, 0.5, "down n2"),
        # a slower measurement (a capped or shared transfer) never raises it
        ([Leg("a", "n1", "n2", 200 * MB)], {("n1", "n2"): 10e6}, 2.0, "down n2"),
        # the link's last leg restores after its last byte: the shortest restore counts
        (
            [Leg("a", "n1", "n2", 100 * MB, 0.0, 0.3), Leg("b", "n1", "n3", 100 * MB, 0.0, 0.1)],
            {},
            2.1,
            "up n1",
        ),
        # one big move: its bytes, then its own freeze (dump and restore)
        (
            [Leg("big", "n1", "n2", 100 * MB, 0.2, 0.3), Leg("s", "n1", "n3", 1 * MB, 0, 0)],
            {},
            1.5,
            "move big",
        ),
        ([], {}, 0.0, ""),
    ],
)
def test_lower_bound(legs, measured, want, by) -> None:
    b = lower_bound(legs, measured, assumed_bps=100e6)
    assert b.seconds == pytest.approx(want) and b.by == by


def test_rates_are_per_link_and_measurements_elsewhere_do_not_count() -> None:
    legs = [Leg("a", "n1", "n2", MB)]
    rates = link_rates(legs, {("n9", "n2"): 300e6, ("n1", "n8"): 200e6, ("n7", "n6"): 1e9}, 100e6)
    assert rates == {"up n1": 200e6, "down n2": 300e6}


@pytest.mark.parametrize(
    "legs, assumed",
    [
        ([Leg("a", "n1", "n2", MB)], 0.0),
        ([Leg("a", "n1", "n2", MB)], float("nan")),
        ([Leg("a", "n1", "n2", -1)], 1e8),
        ([Leg("a", "n1", "n2", MB, -0.1)], 1e8),
    ],
)
def test_bad_input(legs, assumed) -> None:
    with pytest.raises(BadRequest):
        lower_bound(legs, {}, assumed)


leg = st.builds(
    Leg,
    st.text("abcdef", min_size=1, max_size=3),
    st.sampled_from(["n1", "n2"]),
    st.sampled_from(["n3", "n4", "n5"]),
    st.integers(0, 10**9),
    st.floats(0, 1),
    st.floats(0, 1),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(leg, max_size=8, unique_by=lambda g: g.container), st.floats(1e6, 1e10))
def test_one_at_a_time_at_the_slowest_rate_never_beats_the_bound(legs, bps) -> None:
    """A schedule that is surely feasible: every leg alone, bytes then freeze, in turn."""
    b = lower_bound(legs, {}, bps)
    serial = sum(g.bytes / bps + g.dump_s + g.restore_s for g in legs)
    assert b.seconds <= serial + 1e-9


def test_the_report_uses_what_moved_its_freezes_and_the_measured_links() -> None:
    rec = {
        "id": "e-000000000001",
        "node": "a",
        "state": "done",
        "started": 0.0,
        "finished": 1.0,
        "link_bps": 125e6,
        "plan": {},
        "moves": {
            "x": {
                "dst": "b",
                "order": 0,
                "memory_bytes": 500 * MB,
                "outcome": "moved",
                "migration": "m-000000000001",
                "summary": {"criu_freeze_ms": 40.0, "restore_ms": 60.0},
            },
            "y": {
                "dst": "c",
                "order": 1,
                "memory_bytes": 500 * MB,
                "outcome": "rolled_back",
                "migration": "m-000000000002",
            },
        },
    }
    r = report(rec)  # at the assumed 125 MB/s: 4 s of bytes, 0.1 s of freeze
    assert (r["lower_bound_s"], r["bound_by"], r["link_bps"]) == (4.1, "move x", 125e6)
    r = report(rec, {("a", "b"): 1e9})  # loopback: what the transfer measured
    assert (r["lower_bound_s"], r["bound_by"], r["link_bps"]) == (0.6, "move x", 1e9)
    assert r["ratio"] == pytest.approx(1 / 0.6, abs=1e-3)
