"""Evacuation inputs and report: registry records to planner inputs, records to reports."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from tasks.core.codec import decode, encode
from tasks.core.evacplan import (
    compatible,
    node_of,
    parse_rate,
    report,
    specs_of,
)
from tasks.core.nodes import NodeRecord, usage_of
from tasks.core.planner import Plan, PlanLimits, plan
from tests.unit.records import node_record
from workers.errors import BadRequest

M = 1 << 20


@pytest.mark.parametrize(
    "text, want",
    [
        (None, None),
        (1000, 1000.0),
        ("50M", 50e6),
        ("50MB/s", 50e6),
        ("64Mi", 64 * M),
        ("800mbit", 100e6),
        ("1Gbit", 125e6),
        ("1.5k", 1500.0),
    ],
)
def test_parse_rate(text: str | float | None, want: float | None) -> None:
    assert parse_rate(text) == want


@pytest.mark.parametrize("text", ["", "fast", "-5M", "0", "5X", "M5"])
def test_parse_rate_refuses(text: str) -> None:
    with pytest.raises(BadRequest):
        parse_rate(text)


def rec(
    name: str, free: int, containers: tuple[dict[str, object], ...] = (), **kw: object
) -> NodeRecord:
    probe = {"arch": "x86_64", "mem_total_bytes": 4096 * M, "mem_free_bytes": free, "criu_ok": True}
    return node_record(
        {
            "name": name,
            "runtime": "criu",
            "probe": probe,
            "alive": True,
            "cordoned": False,
            "containers": list(containers),
            **kw,
        }
    )


def box(name: str, mb: int, state: str = "running", **labels: str) -> dict[str, object]:
    return {"name": name, "memory_bytes": mb * M, "state": state, "labels": labels}


def test_node_free_memory_counts_the_containers_it_runs_now() -> None:
    n = node_of(
        rec(
            "b",
            1000 * M,
            [
                box("x", 100, **{"anti-affinity": "db"}),
                box("y", 50),
                box("gone", 500, state="exited"),
            ],
        )
    )
    assert n.mem_free_bytes == 850 * M
    assert n.containers == 2 and n.groups == frozenset({"db"})


def test_a_record_read_without_its_inventory_plans_the_same_from_its_usage() -> None:
    full = rec("b", 1000 * M, (box("x", 100, **{"anti-affinity": "db"}), box("y", 50)))
    light = replace(full, containers=(), usage=usage_of(full.containers))
    assert encode(light.usage) == {"memory_bytes": 150 * M, "containers": 2, "groups": ["db"]}
    assert node_of(light) == node_of(full)


def test_a_node_that_never_probed_memory_counts_as_one_tib() -> None:
    n = node_of(node_record({"name": "s1", "runtime": "sim", "probe": {"arch": "x86_64"}}))
    assert n.mem_free_bytes == n.mem_total_bytes == 1 << 40


def test_specs_skip_exited_containers_and_keep_labels() -> None:
    specs = specs_of(rec("a", 0, [box("x", 8, priority="2"), box("z", 8, state="exited")]))
    assert [(s.name, s.priority) for s in specs] == [("x", 2)]


def test_compatible_says_why_a_destination_is_refused() -> None:
    records = {
        "a": rec("a", 0),
        "b": rec("b", 1000 * M, alive=False),
        "c": rec("c", 1000 * M),
        "d": rec("d", 1000 * M, runtime="sim"),
    }
    why = compatible(records, None, "auto")
    a, b, c, d = (node_of(records[n]) for n in "abcd")
    assert why(a, b) == "is not answering"
    assert why(a, c) is None
    assert "runtime" in (why(a, d) or "")
    assert compatible(records, {"b"}, "auto")(a, c) == "is not in --to"
    assert "soft-dirty" in (compatible(records, None, "precopy")(a, c) or "")


def test_the_plan_survives_json() -> None:
    records = {
        "a": rec("a", 0, [box("x", 8), box("y", 16, **{"anti-affinity": "g"})]),
        "b": rec("b", 1000 * M),
    }
    p = plan(
        node_of(records["a"]),
        [node_of(records["b"])],
        specs_of(records["a"]),
        PlanLimits(),
        compatible(records, None, "auto"),
    )
    back = decode(Plan, json.loads(json.dumps(encode(p))))
    assert (back.moves, back.unplaceable, back.headroom) == (p.moves, p.unplaceable, p.headroom)
    assert back.drain == p.drain


def evac(outcomes: dict[str, str], state: str = "done") -> dict:
    moves = {
        c: {
            "dst": "b",
            "order": i,
            "memory_bytes": 125_000_000,
            "outcome": o,
            "migration": f"m-{i:012x}" if o not in ("not_placed", "not_started") else None,
            "error": "" if o == "moved" else "why",
            "summary": {"downtime_ms": 80.0, "total_s": 1.5, "bytes": 5},
        }
        for i, (c, o) in enumerate(outcomes.items())
    }
    p = {
        "drain": {"name": "a", "arch": "x86_64", "mem_total_bytes": 0, "mem_free_bytes": 0},
        "moves": [
            {
                "container": c,
                "src": "a",
                "dst": "b",
                "order": mv["order"],
                "memory_bytes": mv["memory_bytes"],
                "group": None,
                "priority": 0,
            }
            for c, mv in moves.items()
        ],
        "unplaceable": [],
        "headroom": 0.1,
    }
    return {
        "id": "e-000000000001",
        "node": "a",
        "state": state,
        "moves": moves,
        "plan": p,
        "started": 100.0,
        "finished": 104.0,
        "link_bps": 125e6,
    }


def test_report_of_a_full_evacuation() -> None:
    r = report(evac({"x": "moved", "y": "moved"}))
    assert r["counts"]["moved"] == 2 and r["left_on_source"] == []
    assert r["makespan_s"] == 4.0 and r["lower_bound_s"] == 2.0 and r["ratio"] == 2.0
    assert r["message"].startswith("2 of 2 containers moved off a in 4.0 s (lower bound 2.0 s)")
    assert "`ferry uncordon a`" in r["message"]


def test_report_of_a_partial_evacuation_says_what_still_runs_on_the_source() -> None:
    r = report(
        evac(
            {"x": "moved", "y": "rolled_back", "z": "not_started", "w": "failed"}, state="cancelled"
        )
    )
    assert r["left_on_source"] == ["y", "z"]  # w's rollback failed: its record says where it is
    assert r["lower_bound_s"] == 1.0  # only what moved counts
    assert "cancelled" in r["message"] and "still running on a: y, z" in r["message"]
    assert "w failed to roll back: see `ferry status m-000000000003`" in r["message"]
    assert r["message"].endswith("a stays cordoned: fix, then evacuate again")
