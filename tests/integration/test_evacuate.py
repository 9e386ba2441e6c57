"""Evacuations for real: real CRIU, real workers, real Redis, three nodes (e1, e2, e3).

The one simulated test (a container bigger than any node) says so in its name.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from tasks.api.localcluster import LocalCluster
from tasks.control.evacuation import Unplaceable
from tests.conftest import cluster_env, criu_works, need, running
from tests.integration.helpers import assert_went_on, dirtying, ticks, wait_for
from workers import procs
from workers.errors import BadRequest

pytestmark = pytest.mark.criu
NODES = ["e1", "e2", "e3"]
MIB = (8, 16, 32, 64)  # what each counter holds


def sizes(prefix: str) -> dict[str, int]:
    """Counter names (unique per test: a container's log outlives it) and their MiB."""
    return {f"{prefix}{mb}": mb for mb in MIB}


TO = ["e2", "e3"]  # other fixtures' nodes share the test Redis: never land on them


@pytest.fixture(scope="module")
def evac(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[LocalCluster]:
    """Three real CRIU nodes and a coordinator."""
    ok, why = criu_works()
    need(ok, why)
    base = tmp_path_factory.mktemp("evac")
    with running(LocalCluster(base, cluster_env(redis_url)), NODES) as c:
        yield c


def where(c: LocalCluster) -> dict[str, str]:
    return {
        k["name"]: k["node"]
        for k in c.client.containers()
        if k["node"] in NODES and k["state"] != "exited"
    }


def fresh(c: LocalCluster) -> None:
    """No containers, no cordons: each test starts from a clean cluster."""
    for name in where(c):
        c.client.kill(name)
    for k in c.client.containers():  # a second copy a failed test left behind
        if k["node"] in NODES and k["state"] != "exited" and k["pid"] > 0:
            subprocess.run(["kill", "-9", str(k["pid"])], capture_output=True)
    for n in NODES:
        c.client.uncordon(n)
    wait_for(lambda: not where(c), timeout=20)


def counters(c: LocalCluster, node: str, want: dict[str, int]) -> dict[str, dict]:
    """Counters holding ``want`` MiB each on ``node``, ticking."""
    out = {
        name: c.client.run(node, [sys.executable, "-u", "-c", dirtying(mb, stride=256)], name=name)
        for name, mb in want.items()
    }
    for info in out.values():
        wait_for(lambda info=info: len(ticks(info["log"])) > 5, timeout=30)

    def reported() -> bool:  # the registry's memory is live RSS, refreshed by heartbeats
        mem = {k["name"]: k["memory_bytes"] for k in c.client.containers() if k["node"] == node}
        return all(mem.get(n, 0) >= mb << 20 for n, mb in want.items())

    wait_for(reported, timeout=20)
    return out


def test_a_dry_run_plans_and_changes_nothing(evac: LocalCluster) -> None:
    fresh(evac)
    names = counters(evac, "e1", sizes("dry"))
    before = evac.client.store.ids(1000)
    h = evac.client.evacuate("e1", to=TO, dry_run=True)
    assert h.dry_run and h.id is None
    assert sorted(m["container"] for m in h.plan["moves"]) == sorted(names)
    assert {m["dst"] for m in h.plan["moves"]} == {"e2", "e3"}  # spread over both
    assert h.plan["unplaceable"] == [] and h.plan["lower_bound_s"] > 0
    res = evac.cli("evacuate", "e1", "--to", "e2,e3", "--dry-run", "--json")
    assert res.returncode == 0, res.stderr
    placed = {m["container"]: m["dst"] for m in json.loads(res.stdout)["moves"]}
    assert placed.keys() == names.keys()  # sizes are live RSS: the spread may differ
    assert not evac.client.node("e1").cordoned
    assert evac.client.store.ids(1000) == before, "a dry run started a migration"
    assert not evac.client.store.r.exists("ferry:evac:node:e1")
    assert all(where(evac)[n] == "e1" for n in names)


def test_unplaceable_containers_are_reported_before_anything_moves(evac: LocalCluster) -> None:
    fresh(evac)
    for name in ("db-a", "db-b", "db-c"):  # one anti-affinity group, two destinations
        evac.client.run(
            "e1",
            [sys.executable, "-u", "-c", dirtying(4, 256)],
            name=name,
            labels={"anti-affinity": "db"},
        )
    wait_for(lambda: len(where(evac)) == 3, timeout=20)
    before = evac.client.store.ids(1000)
    with pytest.raises(Unplaceable) as exc:
        evac.client.evacuate("e1", to=TO)
    [(name, why)] = [(u["container"], u["reason"]) for u in exc.value.preview["unplaceable"]]
    assert "anti-affinity group 'db'" in why
    res = evac.cli("evacuate", "e1", "--to", "e2,e3", "--json")
    assert res.returncode == 2, res.stdout + res.stderr
    [left] = json.loads(res.stdout)["unplaceable"]  # the smallest by live RSS: it may differ
    assert left["container"].startswith("db-") and "anti-affinity" in left["reason"]
    assert "--allow-partial" in res.stderr
    assert evac.client.store.ids(1000) == before, "something moved"
    assert not evac.client.node("e1").cordoned, "a refused evacuation left e1 cordoned"
    assert not evac.client.store.r.exists("ferry:evac:node:e1")
    # --allow-partial moves the two that have a place and says the third stayed
    rep = evac.client.evacuate("e1", to=TO, allow_partial=True).wait(timeout=120)
    assert rep["counts"]["moved"] == 2 and rep["counts"]["not_placed"] == 1
    [name] = rep["left_on_source"]
    assert where(evac)[name] == "e1"
    assert f"still running on e1: {name}" in rep["message"]


def test_four_counters_leave_e1_and_go_on(evac: LocalCluster) -> None:
    fresh(evac)
    infos = counters(evac, "e1", sizes("go"))
    h = evac.client.evacuate("e1", to=TO, max_parallel=2, per_node=2)
    with pytest.raises(BadRequest, match=f"being evacuated already by {h.id}"):
        evac.client.evacuate("e1", to=TO)
    second = evac.cli("evacuate", "e1", "--to", "e2,e3", "--json")
    assert second.returncode == 2 and h.id in second.stderr
    seen = set()
    while (p := h.progress())["state"] == "running":
        assert len(p["running"]) <= 2, "more migrations at once than max_parallel"
        seen.update(r["container"] for r in p["running"])
        time.sleep(0.1)
    rep = h.wait(timeout=5)
    assert rep["state"] == "done" and rep["counts"]["moved"] == 4, rep
    outcomes = {r["container"]: r["outcome"] for r in rep["containers"]}
    assert outcomes == dict.fromkeys(infos, "moved")
    assert [r["container"] for r in rep["containers"]] == list(infos), "smallest first"
    for r in rep["containers"]:
        assert r["dst"] in ("e2", "e3") and r["downtime_ms"] > 0 and r["total_s"] > 0
    assert rep["makespan_s"] > 0 and rep["lower_bound_s"] > 0 and rep["left_on_source"] == []
    ended = {name: max(ticks(info["log"])) for name, info in infos.items()}
    wait_for(lambda: all(max(ticks(i["log"])) >= ended[n] + 8 for n, i in infos.items()))
    for name, info in infos.items():
        before = max(t for t in ticks(info["log"]))
        wait_for(lambda info=info, before=before: max(ticks(info["log"])) > before + 3)
        assert_went_on(ticks(info["log"]), before)
        assert not procs.alive(info["pid"]), f"{name}'s source copy still runs"
    moved = where(evac)
    assert {moved[n] for n in infos} <= {"e2", "e3"} and "e1" not in moved.values()
    assert evac.client.node("e1").cordoned, "e1 must stay cordoned"
    assert not evac.client.store.r.exists("ferry:evac:node:e1"), "the node lock was kept"
    assert evac.client.evacuation(h.id).result() == rep


def test_cli_evacuates_with_json_and_with_a_table(evac: LocalCluster) -> None:
    fresh(evac)
    counters(evac, "e2", {"j8": 8, "j16": 16})
    res = evac.cli("evacuate", "e2", "--to", "e3", "--json", timeout=180)
    assert res.returncode == 0, res.stdout + res.stderr
    rep = json.loads(res.stdout)
    assert rep["counts"]["moved"] == 2 and {r["dst"] for r in rep["containers"]} == {"e3"}
    assert where(evac) == {"j8": "e3", "j16": "e3"}
    nodes = {n["name"]: n for n in json.loads(evac.cli("nodes", "--json").stdout)}
    assert nodes["e2"]["cordoned"] and not nodes["e3"]["cordoned"]
    human = evac.cli("evacuate", "e3", "--to", "e1", timeout=180)
    assert human.returncode == 0, human.stdout + human.stderr
    assert "moved" in human.stdout and "makespan" in human.stdout
    assert "2 of 2 containers moved off e3" in human.stdout
    assert "e3 stays cordoned" in human.stdout
    assert evac.cli("cordon", "e1", "--json").returncode == 0
    assert evac.cli("uncordon", "e1", "--json").returncode == 0


def test_a_cancel_stops_new_moves_and_the_rest_stays_on_the_source(evac: LocalCluster) -> None:
    fresh(evac)
    infos = counters(evac, "e1", sizes("cx"))
    res = evac.cli("evacuate", "e1", "--to", "e2,e3", "--max-parallel", "1", "--no-wait", "--json")
    eid = json.loads(res.stdout)["id"]
    wait_for(lambda: evac.client.evacuation(eid).progress()["running"], timeout=20)
    assert evac.cli("cancel", eid).returncode == 0
    rep = evac.client.evacuation(eid).wait(timeout=120)
    assert rep["state"] == "cancelled" and rep["counts"]["not_started"] >= 2, rep
    now = where(evac)
    for r in rep["containers"]:
        assert now[r["container"]] == ("e1" if r["outcome"] != "moved" else r["dst"])
        assert procs.alive(infos[r["container"]]["pid"]) == (r["outcome"] != "moved")
    assert "cancelled" in rep["message"] and "e1 stays cordoned" in rep["message"]
    with pytest.raises(BadRequest, match="already cancelled"):
        evac.client.evacuation(eid).cancel()
    again = evac.cli("evacuate", "--cancel", eid)
    assert again.returncode == 2 and "already cancelled" in again.stderr


def test_moves_pending_to_a_destination_that_is_cordoned_meanwhile_go_elsewhere(
    evac: LocalCluster,
) -> None:
    fresh(evac)
    infos = counters(evac, "e1", sizes("rp"))
    h = evac.client.evacuate("e1", to=TO, max_parallel=1, per_node=1)
    evac.client.cordon("e3")  # as if e3 filled up or went into maintenance
    rep = h.wait(timeout=180)
    assert rep["counts"]["moved"] == 4, rep
    on_e3 = [r["container"] for r in rep["containers"] if r["dst"] == "e3"]
    assert len(on_e3) <= 1, "only a move started before the cordon may land on e3"
    excluded = h.record()["excluded"]  # seen by the tick, or by the migrate it refused
    assert list(excluded) == ["e3"] and "cordoned" in excluded["e3"], excluded
    assert set(where(evac)) >= set(infos)


def test_a_timeout_stops_the_evacuation_and_rolls_back_what_it_can(evac: LocalCluster) -> None:
    fresh(evac)
    counters(evac, "e1", sizes("to"))
    res = evac.cli(
        "evacuate",
        "e1",
        "--to",
        "e2,e3",
        "--max-parallel",
        "1",
        "--timeout",
        "0.5",
        "--json",
        timeout=180,
    )
    assert res.returncode == 4, res.stdout + res.stderr
    rep = json.loads(res.stdout)
    assert rep["state"] == "timed_out" and rep["counts"]["not_started"] >= 2, rep
    copies = [
        (k["name"], k["node"])
        for k in evac.client.containers()
        if k["node"] in NODES and k["state"] != "exited"
    ]
    for r in rep["containers"]:  # each exactly once: where it moved, or still on e1
        assert r["outcome"] in ("moved", "rolled_back", "not_started")
        want = r["dst"] if r["outcome"] == "moved" else "e1"
        assert [n for c, n in copies if c == r["container"]] == [want], (r, copies)


def test_a_bandwidth_cap_holds_for_each_migration(evac: LocalCluster) -> None:
    fresh(evac)
    counters(evac, "e3", {"slow": 32})
    rep = evac.client.evacuate("e3", to=["e1"], bandwidth="16M", strategy="cold").wait(120)
    assert rep["counts"]["moved"] == 1, rep
    m = evac.client.status(rep["containers"][0]["migration"])
    assert m.options.bandwidth_bps == 16e6
    moved = m.results["dump"].get("pages") or m.results["transfer"]  # streamed, or as files
    sent, wall_s = moved["bytes"], moved["wall_ms"] / 1000
    assert sent > 30 << 20 and sent / wall_s < 16e6 * 1.1, (sent, wall_s)


def test_simulated_a_container_bigger_than_any_node_is_not_placed(sim_cluster) -> None:
    """SIMULATED (sim runtime): a 2 TiB container; sim nodes count as 1 TiB free."""
    client = sim_cluster.client
    client.run("s1", ["counter"], name="huge", labels={"sim.memory": str(2 << 40)})
    try:
        wait_for(lambda: any(c["name"] == "huge" for c in client.containers()))
        with pytest.raises(Unplaceable, match="no destination for huge") as exc:
            client.evacuate("s1", to=["s2"])
        assert "left after headroom" in exc.value.preview["unplaceable"][0]["reason"]
        assert not client.node("s1").cordoned
    finally:
        client.kill("huge")


def test_doctor_and_nodes_show_each_nodes_strategies(evac: LocalCluster) -> None:
    res = evac.cli("doctor", "--json")
    assert res.returncode == 0, res.stdout + res.stderr
    reports = {n["node"]: n for n in json.loads(res.stdout)["nodes"]}
    assert set(NODES) <= set(reports)
    assert {"cold", "delta"} <= set(reports["e1"]["strategies"])
    one = evac.cli("doctor", "e1")
    assert one.returncode == 0 and one.stdout.count("runs: ") == 1
    assert "pairs with: " in one.stdout and "e2" in one.stdout.split("pairs with: ")[1]
    bad = evac.cli("doctor", "nosuch")
    assert bad.returncode == 2 and "unknown node 'nosuch'" in bad.stderr
    rows = {n["name"]: n for n in json.loads(evac.cli("nodes", "--json").stdout)}
    assert rows["e1"]["strategies"] == reports["e1"]["strategies"]
    assert evac.cli("nodes").returncode == 0
