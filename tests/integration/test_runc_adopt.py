"""A runc container started outside ferry is adopted by its ID, moved and released: real runc, CRIU.

Nodes a1 and a2 (FERRY_RUNTIME=oci) on one host; FERRY_RUNC_ROOT is the runc
root the container was started under (``runc --root R run --detach``, its
stdio on a pipe a ``cat`` copies into a log), its bundle (config.json and
rootfs, a 256 MiB limit in its cgroup) on the storage both nodes see. Each
node has a runc root of its own at that one path, as real nodes' /run/runc
are: its worker runs in a private mount namespace with its own dir mounted
on R, and ``runc`` "on a1" runs there (nsenter). ``ferry
adopt --node a1 runc:ID`` takes it; it moves a1 -> a2 cold, back with delta,
and to a2 with post-copy, and goes on where it stopped (its ticks, first in its
own log then in ferry's, never repeat or go back); ``runc state`` agrees it
runs and its limit is read back from the cgroup after each move; ``ferry
release`` leaves it running, runc's alone. A bind-mounted host dir, a host
device and stdout on a host file are refused at adopt, in one line, the
container left running.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tasks.api.localcluster import LocalCluster
from tasks.core.chooser import strategy_refusal
from tests.conftest import cluster_env, criu_works, need, running
from tests.integration.helpers import assert_went_on, limit_of, ticks, wait_for
from tests.integration.ocirootfs import build_rootfs, counter_argv
from tests.integration.podmanimage import node_stores
from tests.integration.test_container_verbs import cli
from workers.errors import FerryError
from workers.runtimes.ocibundle import config, write_bundle

pytestmark = pytest.mark.criu
NODES = ["a1", "a2"]
LIMIT = 256 << 20
# runc run --detach hands the container its own stdio: here a pipe a cat copies to the log
ROOT = Path("/run/ferry-runc-test")  # only a mount point: each node's own dir is mounted on it
START = 'runc --root "$1" run --bundle "$2" --detach "$3" < /dev/null 2>&1 | cat >> "$4"'
START_TO_FILE = 'runc --root "$1" run --bundle "$2" --detach "$3" < /dev/null > "$4" 2>&1'


@pytest.fixture(scope="module")
def ra(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[dict[str, Any]]:
    ok, why = criu_works()
    need(ok, why)
    need(shutil.which("runc") is not None, "runc is not installed (ops/dev setup installs it)")
    need(shutil.which("nsenter") is not None, "nsenter is not installed (util-linux)")
    base = tmp_path_factory.mktemp("runc-adopt")
    env = {**cluster_env(redis_url), "FERRY_RUNTIME": "oci", "FERRY_RUNC_ROOT": str(ROOT)}
    mounts = node_stores(base, NODES, ROOT)
    with running(LocalCluster(base, env, mounts), NODES) as c:
        pids = {n: c.procs[n].pid for n in NODES}
        yield {"cluster": c, "pids": pids, "base": base, "rootfs": build_rootfs(base / "rootfs")}


class Outside:
    """A container ``runc --root ROOT run --detach`` started, as a user outside ferry would."""

    def __init__(self, ra: dict[str, Any], cid: str, cfg: dict[str, Any] | None = None) -> None:
        self.pids, self.cid = ra["pids"], cid
        self.bundle = ra["base"] / "bundles" / cid
        self.log = ra["base"] / f"{cid}.log"
        write_bundle(self.bundle, cfg or config(cid, ra["rootfs"], counter_argv(), LIMIT))

    def on(self, node: str) -> list[str]:
        """A command prefix: run in ``node``'s mount namespace, where its runc root is."""
        return ["nsenter", "--target", str(self.pids[node]), "--mount"]

    def start(self, script: str = START) -> None:
        args = [str(ROOT), str(self.bundle), self.cid, str(self.log)]
        self.keeper = subprocess.Popen([*self.on("a1"), "sh", "-c", script, "sh", *args])
        wait_for(lambda: self.state("a1") == "running", timeout=30)

    def state(self, node: str) -> str:
        argv = [*self.on(node), "runc", "--root", str(ROOT), "state", self.cid]
        out = subprocess.run(argv, capture_output=True, text=True)
        return str(json.loads(out.stdout)["status"]) if out.returncode == 0 else "gone"

    def remove(self) -> None:
        for node in NODES:
            argv = [*self.on(node), "runc", "--root", str(ROOT), "delete", "--force", self.cid]
            subprocess.run(argv, capture_output=True)
        self.keeper.kill()


def ours(c: LocalCluster, name: str) -> list[tuple[str, str]]:
    return [(k["node"], k["state"]) for k in c.client.containers() if k["name"] == name]


def test_an_adopted_runc_container_moves_cold_delta_postcopy_and_is_released(ra) -> None:  # type: ignore[no-untyped-def]
    c = ra["cluster"]
    box = Outside(ra, "ra")
    box.start()
    try:
        wait_for(lambda: len(ticks(box.log)) > 10, timeout=30)
        got = cli(c, "adopt", "--node", "a1", "runc:ra")
        assert got.exit_code == 0, got.output
        ferry_log = next(k["log"] for k in c.client.containers() if k["name"] == "ra")

        def values() -> list[int]:  # its own log until the first move, ferry's since
            return ticks(box.log) + (ticks(ferry_log) if Path(ferry_log).exists() else [])

        here = "a1"
        lazy = strategy_refusal("postcopy", *(c.client.node(n).caps for n in NODES))
        moves = [("a2", "cold"), ("a1", "delta"), ("a2", "postcopy")]
        for there, strategy in moves if lazy is None else moves[:2]:
            m = c.client.migrate("ra", there, strategy=strategy).wait(timeout=120)
            assert m.state.value == "done", m.errors
            before = max(values())
            wait_for(lambda b=before: max(values()) >= b + 8, timeout=30)
            assert_went_on(values(), before)
            assert values() == list(range(values()[-1] + 1)), "a tick was lost or repeated"
            assert wait_for(lambda t=there: ours(c, "ra") == [(t, "running")], timeout=30)
            # runc's own view: under the root it was started in, on the destination only
            assert (box.state(there), box.state(here)) == ("running", "gone")
            assert limit_of(c.client, "ra") == LIMIT
            here = there
        got = cli(c, "release", "ra")
        assert got.exit_code == 0, got.output
        # the registry may still hold a heartbeat's inventory from before the release
        assert wait_for(lambda: ours(c, "ra") == [], timeout=10)
        assert box.state(here) == "running"  # runc's alone, running on
        before = max(values())
        wait_for(lambda: max(values()) > before, timeout=30)
        if lazy is not None:
            pytest.skip(f"cold and delta moved it; post-copy cannot run here: {lazy}")
    finally:
        with contextlib.suppress(FerryError):
            c.client.kill("ra")
        box.remove()


def with_bind(cfg: dict[str, Any]) -> dict[str, Any]:
    mount = {"destination": "/hostetc", "type": "bind", "source": "/etc", "options": ["rbind"]}
    return {**cfg, "mounts": [*cfg["mounts"], mount]}


def with_device(cfg: dict[str, Any]) -> dict[str, Any]:
    dev = {"path": "/dev/xnull", "type": "c", "major": 1, "minor": 3, "fileMode": 0o666}
    return {**cfg, "linux": {**cfg["linux"], "devices": [dev]}}


@pytest.mark.parametrize(
    ("change", "script", "why"),
    [
        (with_bind, START, "bind-mounts host dir /etc on /hostetc"),
        (with_device, START, "has host device /dev/xnull"),
        (None, START_TO_FILE, "has its stdout on host file"),
    ],
    ids=["bind-mount", "device", "stdout-file"],
)
def test_what_cannot_be_checkpointed_is_refused_at_adopt(ra, change, script, why) -> None:  # type: ignore[no-untyped-def]
    c = ra["cluster"]
    cfg = config("rbad", ra["rootfs"], counter_argv(), LIMIT)
    box = Outside(ra, "rbad", change(cfg) if change else cfg)
    box.start(script)
    try:
        got = cli(c, "adopt", "--node", "a1", "runc:rbad")
        assert got.exit_code != 0
        assert why in got.output and len(got.output.strip().splitlines()) == 1, got.output
        assert ours(c, "rbad") == [] and box.state("a1") == "running"
    finally:
        box.remove()


def test_an_unknown_id_and_a_ferry_container_are_refused(ra) -> None:  # type: ignore[no-untyped-def]
    c = ra["cluster"]
    got = cli(c, "adopt", "--node", "a1", "runc:nosuch")
    assert got.exit_code != 0 and "has no container 'nosuch'" in got.output, got.output
    argv = ["--rootfs", str(ra["rootfs"]), "--", *counter_argv()]
    assert cli(c, "run", "--node", "a1", "--name", "rown", *argv).exit_code == 0
    try:
        got = cli(c, "release", "rown")
        assert got.exit_code != 0 and "started by ferry, not adopted" in got.output, got.output
    finally:
        c.client.kill("rown")
