"""Podman's containers move between two real nodes and stay Podman's: real Podman, runc, CRIU.

Nodes p1 and p2 (FERRY_RUNTIME=oci) run on one host, so each gets a Podman of
its own: its worker runs in a private mount namespace where the node's own
directory is mounted on one common path, FERRY_PODMAN_STORE (Podman's --root,
--runroot and --tmpdir below it). Every path is the same on both nodes, as on
real nodes using the host's store, yet ``podman ps`` "on p2" (run by nsenter in
p2's mount namespace) sees p2's containers only. The image is imported on p1
alone: the first move must carry it to p2.

A counter that checks 16 MiB of its memory on every tick is adopted
(``ferry adopt --node p1 podman:NAME``), moved cold and back delta, and goes on
where it stopped: its ticks (``podman logs`` on the destination) never repeat
or go back, ``podman ps`` lists it on the destination only (running, same
name, same image ID), its memory limit is read back from the destination's
cgroup, and ``ferry release`` hands it back to Podman. A tty container, a bind
mount and a name taken on the destination are refused before anything freezes.
An evacuation of p1 moves one of ferry's runc containers and an adopted Podman
container together. A worker that SIGKILLs itself after the dump, the transfer
or the restore (workers.failpoints) leaves exactly one copy, running, in the
Podman of the node ferry says holds it, its counter gone on with no tick lost
or repeated. Post-copy of an adopted container is refused before anything
freezes (Podman 4.3 has no lazy pages), on nodes where runc's containers can.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tasks.api.localcluster import LocalCluster
from tests.conftest import cluster_env, criu_works, need, running
from tests.integration.helpers import assert_went_on, cgroup_memory_limit, ticks, wait_for
from tests.integration.ocirootfs import COUNTER, build_rootfs
from tests.integration.podmanimage import (
    COMMON,
    NodePodman,
    import_image,
    node_stores,
    podman_run_args,
)
from tests.integration.test_container_verbs import cli
from workers.errors import CapabilityError, FerryError
from workers.runtimes.podmancli import Podman

pytestmark = pytest.mark.criu
NODES = ["p1", "p2"]
LIMIT = 256 << 20


@pytest.fixture(scope="module")
def pm(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[dict[str, Any]]:
    ok, why = criu_works()
    need(ok, why)
    for tool in ("runc", "podman", "nsenter"):
        need(shutil.which(tool) is not None, f"{tool} is not installed (ops/dev setup installs it)")
    base = tmp_path_factory.mktemp("podman-cluster")
    mounts = node_stores(base, NODES)
    env = {**cluster_env(redis_url), "FERRY_RUNTIME": "oci", "FERRY_PODMAN_STORE": str(COMMON)}
    env["FERRY_FAILPOINTS"] = str(base / "failpoints")  # workers.failpoints: the kill -9 test
    with running(LocalCluster(base, env, mounts), NODES) as c:
        pods = {n: NodePodman(store=COMMON, pid=c.procs[n].pid) for n in NODES}
        rootfs = build_rootfs(base / "rootfs")
        image = import_image(pods["p1"], rootfs, base / "rootfs.tar")
        yield {"cluster": c, "pods": pods, "image": image, "base": base}
        for p in pods.values():
            for name in p.ok("ps", "--all", "--quiet").split():
                p.call("container", "rm", "--force", name)


def ours(c: LocalCluster) -> list[dict[str, Any]]:
    """The containers on this module's nodes (other modules' nodes may share the registry)."""
    return [k for k in c.client.containers() if k["node"] in NODES]


def names(c: LocalCluster) -> set[str]:
    """Ours by name: an earlier test's container may still be listed (exited), so a
    test asks about its own."""
    return {k["name"] for k in ours(c)}


def run_counter(pod: Podman, name: str, *extra: str) -> None:
    pod.ok(
        "run", "--detach", "--name", name, *podman_run_args(), "--memory", str(LIMIT), *extra,
        "localhost/ferry-test:py", "/usr/bin/python3", "-S", "-u", "-c", COUNTER,
    )  # fmt: skip


def logged(pod: Podman, name: str, where: Path) -> list[int]:
    where.write_text(pod.ok("logs", name))
    return ticks(where)


def listed(pod: Podman) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = json.loads(pod.ok("ps", "--format", "json") or "[]")
    return out


def test_adopted_counter_moves_cold_and_delta_and_stays_podmans(pm, tmp_path) -> None:  # type: ignore[no-untyped-def]
    c, pods, image = pm["cluster"], pm["pods"], pm["image"]
    run_counter(pods["p1"], "pc")
    log = tmp_path / "pc.log"
    wait_for(lambda: len(logged(pods["p1"], "pc", log)) > 10, timeout=30)
    got = cli(c, "adopt", "--node", "p1", "podman:pc")
    assert got.exit_code == 0, got.output
    assert not pods["p2"].has_image(image)  # the first move carries it
    here = "p1"
    for there, strategy in (("p2", "cold"), ("p1", "delta")):
        m = c.client.migrate("pc", there, strategy=strategy).wait(timeout=180)
        assert m.state.value == "done", m.errors
        before = max(logged(pods[there], "pc", log))
        wait_for(lambda t=there, b=before: max(logged(pods[t], "pc", log)) >= b + 8, timeout=30)
        values = logged(pods[there], "pc", log)  # the log moved with it: every tick since start
        assert_went_on(values, before)
        assert values[0] == 0 and values == list(range(values[-1] + 1)), "a tick was lost"
        assert "corrupt" not in log.read_text()
        ps = listed(pods[there])
        assert [(p["Names"], p["State"], p["ImageID"]) for p in ps] == [(["pc"], "running", image)]
        assert listed(pods[here]) == []
        assert pods[here].inspect("pc") is None  # removed, not just stopped
        pid = int(pods[there].inspect("pc")["State"]["Pid"])  # type: ignore[index]
        assert cgroup_memory_limit(pid) == LIMIT
        held = [(k["node"], k["state"], k["runtime"]) for k in ours(c)]
        assert held == [(there, "running", "oci")]
        here = there
    got = cli(c, "release", "pc")
    assert got.exit_code == 0, got.output
    assert "pc" not in names(c)
    assert [p["Names"] for p in listed(pods["p1"])] == [["pc"]]  # Podman's alone, running on
    pods["p1"].remove("pc")


def test_an_evacuation_moves_a_runc_and_a_podman_container_together(pm, tmp_path) -> None:  # type: ignore[no-untyped-def]
    c, pods = pm["cluster"], pm["pods"]
    rootfs = build_rootfs(pm["base"] / "rootfs")
    got = cli(c, "run", "--node", "p1", "--name", "rc", "--rootfs", str(rootfs), "--memory",
              "256M", "--", "/usr/bin/python3", "-S", "-u", "-c", COUNTER)  # fmt: skip
    assert got.exit_code == 0, got.output
    rc_log = next(k["log"] for k in ours(c) if k["name"] == "rc")
    run_counter(pods["p1"], "pe")
    pe_log = tmp_path / "pe.log"
    wait_for(lambda: len(logged(pods["p1"], "pe", pe_log)) > 10 and len(ticks(rc_log)) > 10, 30)
    assert cli(c, "adopt", "--node", "p1", "podman:pe").exit_code == 0
    try:
        rep = c.client.evacuate("p1", to=["p2"]).wait(timeout=300)
        assert rep["counts"]["moved"] == 2, rep
        where = {k["name"]: (k["node"], k["state"]) for k in ours(c)}
        assert where == {"rc": ("p2", "running"), "pe": ("p2", "running")}
        for now in (lambda: ticks(rc_log), lambda: logged(pods["p2"], "pe", pe_log)):
            before = max(now())
            wait_for(lambda n=now, b=before: max(n()) >= b + 5, timeout=30)
            assert_went_on(now(), before)
        assert [p["Names"] for p in listed(pods["p2"])] == [["pe"]] and listed(pods["p1"]) == []
    finally:
        c.client.uncordon("p1")
        for name in ("rc", "pe"):
            with contextlib.suppress(FerryError):
                c.client.kill(name)


@pytest.mark.parametrize("point", ["dump:kill-after", "transfer:kill-after", "restore:kill-after"])
def test_a_worker_killed_mid_move_leaves_one_copy_and_podman_agrees(pm, tmp_path, point) -> None:  # type: ignore[no-untyped-def]
    c, pods = pm["cluster"], pm["pods"]
    name = f"pk-{point.split(':')[0]}"
    run_counter(pods["p1"], name)
    log = tmp_path / "k.log"
    wait_for(lambda: len(logged(pods["p1"], name, log)) > 10, timeout=30)
    assert cli(c, "adopt", "--node", "p1", f"podman:{name}").exit_code == 0
    control = pm["base"] / "failpoints"
    control.write_text(point + "\n")  # the worker running that phase SIGKILLs itself there
    try:
        m = c.client.migrate(name, "p2", strategy="cold").wait(timeout=240)
    finally:
        control.write_text("")
    try:
        assert m.state.value in ("done", "rolled_back"), m.errors
        print(f"podman cold, {point} -> {m.state.value}")
        holder = "p2" if m.state.value == "done" else "p1"
        other = "p1" if holder == "p2" else "p2"

        def where() -> list[tuple[str, str]]:
            return [(k["node"], k["state"]) for k in ours(c) if k["name"] == name]

        wait_for(lambda: where() == [(holder, "running")], timeout=10)
        assert [p["Names"] for p in listed(pods[holder])] == [[name]]
        assert pods[other].inspect(name) is None  # no second copy, not even a stopped one
        before = max(logged(pods[holder], name, log))
        wait_for(lambda: max(logged(pods[holder], name, log)) >= before + 5, timeout=30)
        values = logged(pods[holder], name, log)
        assert values == list(range(values[-1] + 1)), "a tick was lost or repeated"
    finally:
        with contextlib.suppress(FerryError):
            c.client.kill(name)
        for p in pods.values():
            p.call("container", "rm", "--force", name)


@pytest.mark.parametrize(
    ("extra", "why"),
    [
        (["--tty"], "has a terminal"),
        (["--volume", "/etc:/hostetc:ro"], "bind-mounts host dir /etc"),
        (["--device", "/dev/null:/dev/xnull"], "host device /dev/null"),
    ],
)
def test_what_cannot_be_checkpointed_is_refused_at_adopt(pm, extra, why) -> None:  # type: ignore[no-untyped-def]
    c, pod = pm["cluster"], pm["pods"]["p1"]
    run_counter(pod, "bad", *extra)
    try:
        got = cli(c, "adopt", "--node", "p1", "podman:bad")
        assert got.exit_code != 0
        assert why in got.output and len(got.output.strip().splitlines()) == 1, got.output
        assert "bad" not in names(c)
        assert pod.inspect("bad")["State"]["Running"]  # type: ignore[index]
    finally:
        pod.remove("bad")


def test_unknown_container_and_non_podman_refs_are_refused(pm) -> None:  # type: ignore[no-untyped-def]
    c = pm["cluster"]
    got = cli(c, "adopt", "--node", "p1", "podman:nosuch")
    assert got.exit_code != 0 and "has no container named 'nosuch'" in got.output
    got = cli(c, "adopt", "--node", "p1", "docker:web")
    assert got.exit_code != 0 and "say podman:NAME" in got.output


def test_a_name_taken_on_the_destination_is_refused_before_the_freeze(pm, tmp_path) -> None:  # type: ignore[no-untyped-def]
    c, pods = pm["cluster"], pm["pods"]
    run_counter(pods["p1"], "taken")
    pods["p2"].ok("create", "--name", "taken", *podman_run_args(), pm["image"], "/usr/bin/python3")
    try:
        assert cli(c, "adopt", "--node", "p1", "podman:taken").exit_code == 0
        m = c.client.migrate("taken", "p2", strategy="cold").wait(timeout=120)
        assert m.state.value != "done"
        assert any(
            "Podman on this node already has a container named 'taken'" in e for e in m.errors
        )
        assert "dump" not in m.results  # nothing froze
        before = max(logged(pods["p1"], "taken", tmp_path / "t.log"))
        wait_for(lambda: max(logged(pods["p1"], "taken", tmp_path / "t.log")) > before, 30)
        assert [p["State"] for p in listed(pods["p1"])] == ["running"]
    finally:
        with contextlib.suppress(FerryError):
            c.client.release("taken")
        for p in pods.values():
            p.call("container", "rm", "--force", "taken")


def test_post_copy_of_a_podman_container_is_refused_and_it_runs_on(pm, tmp_path) -> None:  # type: ignore[no-untyped-def]
    c, pods = pm["cluster"], pm["pods"]
    caps = c.client.node("p1").caps  # the node can: the refusal is Podman's
    need(caps.lazy_pages, f"post-copy cannot run on this machine: {caps.lazy_pages_reason}")
    run_counter(pods["p1"], "plazy")
    log = tmp_path / "plazy.log"
    try:
        assert cli(c, "adopt", "--node", "p1", "podman:plazy").exit_code == 0
        with pytest.raises(CapabilityError, match="Podman 4.3's checkpoint has no lazy pages"):
            c.client.migrate("plazy", "p2", strategy="postcopy").wait(timeout=60)
        before = max(logged(pods["p1"], "plazy", log))
        wait_for(lambda: max(logged(pods["p1"], "plazy", log)) > before + 3, timeout=30)
        assert [p["State"] for p in listed(pods["p1"])] == ["running"] and listed(pods["p2"]) == []
    finally:
        with contextlib.suppress(FerryError):
            c.client.release("plazy")
        for p in pods.values():
            p.call("container", "rm", "--force", "plazy")
