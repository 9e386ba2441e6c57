"""The sim runtime's model: dirtying with a hot set, stamping windows, costs."""

from __future__ import annotations

import doctest

import pytest
from hypothesis import given
from hypothesis import strategies as st

import workers.runtimes.simmodel
from workers.errors import BadRequest
from workers.runtimes.simmodel import (
    MIB,
    PAGE,
    SimModel,
    Workload,
    dirtied,
    dump_ms,
    pages,
    restore_ms,
    windows,
    workload,
)


def test_docstring_examples() -> None:
    assert doctest.testmod(workers.runtimes.simmodel).failed == 0


@pytest.mark.parametrize(
    ("labels", "expect"),
    [
        ({}, Workload(64 * MIB, 0.10 * 64 * MIB, int(0.10 * 64 * MIB))),
        ({"sim.memory": str(8 * MIB)}, Workload(8 * MIB, 0.10 * 8 * MIB, int(0.10 * 8 * MIB))),
        ({"sim.memory": "4096", "sim.dirty_rate": "0", "sim.hot_set": "0"}, Workload(4096, 0.0, 0)),
    ],
)
def test_workload_from_labels(labels: dict[str, str], expect: Workload) -> None:
    assert workload(SimModel(), labels) == expect


@pytest.mark.parametrize(
    "labels",
    [
        {"sim.memory": "lots"},
        {"sim.memory": "-1"},
        {"sim.dirty_rate": "nan"},
        {"sim.memory": "4096", "sim.hot_set": "8192"},
    ],
)
def test_bad_labels_are_refused(labels: dict[str, str]) -> None:
    with pytest.raises(BadRequest, match="sim"):
        workload(SimModel(), labels)


def test_passes_converge_to_the_hot_set() -> None:
    """A pre-copy loop on the model: each pass sends what was dirtied while the
    previous one was on the wire (100 Mbit/s), and shrinks towards the hot set."""
    m = SimModel()
    wl = workload(m, {"sim.memory": str(256 * MIB)})
    link = 11.9e6  # bytes/s, the data plane on a 100 Mbit/s link (docs/benchmarks/cold.json)
    sent = [pages(wl.memory)]
    for _ in range(6):
        sent.append(sum(dirtied(wl, sent[-1] * PAGE / link, m.hot_writes)))
    assert sent == sorted(sent, reverse=True)
    hot = pages(wl.hot_bytes)
    assert hot < sent[-1] < 1.5 * hot, sent


def test_no_dirtying_when_the_rate_is_zero_or_no_time_passed() -> None:
    m = SimModel()
    assert dirtied(workload(m, {"sim.dirty_rate": "0"}), 10.0, m.hot_writes) == (0, 0)
    assert dirtied(workload(m, {}), 0.0, m.hot_writes) == (0, 0)


@given(
    memory=st.integers(1, 1 << 16),
    hot=st.floats(0, 1),
    rate=st.floats(0, 1e9),
    seconds=st.floats(0, 1e4),
    turn=st.integers(0, 1 << 40),
)
def test_windows_stamp_exactly_the_dirtied_pages(
    memory: int, hot: float, rate: float, seconds: float, turn: int
) -> None:
    wl = Workload(memory * PAGE, rate, int(hot * memory) * PAGE)
    hot_cold = dirtied(wl, seconds, 0.9)
    ranges = windows(wl, hot_cold, turn)
    covered = [p for a, b in ranges for p in range(a, b)]
    assert len(covered) == len(set(covered)) == min(sum(hot_cold), memory)
    assert all(0 <= p < memory for p in covered)
    hot_pages = pages(wl.hot_bytes)
    assert sum(p < hot_pages for p in covered) == min(hot_cold[0], hot_pages)


def test_costs_match_the_fitted_measurements() -> None:
    """Within 25 % of real CRIU's medians on this project's VM (docs/benchmarks/cold.json)."""
    m = SimModel()
    for mib, freeze, restore in ((64, 40, 80), (256, 120, 195), (1024, 510, 700)):
        assert dump_ms(m, mib * MIB) == pytest.approx(freeze, rel=0.25)
        assert restore_ms(m, mib * MIB) == pytest.approx(restore, rel=0.25)
    assert restore_ms(m, 1024 * MIB, lazy=True) == m.restore_fixed_ms
