"""Bad input, generated (hypothesis): every bad container name, migration id,
node name, strategy, number, duration, bandwidth or path gets a clear error
that names it (a FerryError from the API; exit code 2 and ``error: ...`` or a
click usage error from the CLI) and changes nothing: no record, no event, no
container started or killed. Good values are accepted.

Against the SIMULATED cluster (``sim_cluster``: nodes s1, s2): what is under
test is the checking, which happens before any node is asked to do anything.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tasks.api.cli import main
from tasks.api.localcluster import LocalCluster
from tasks.core.evacplan import parse_rate
from tasks.core.strategy import CONCRETE as STRATEGIES
from workers.dirsync.dirs import check_dirs
from workers.errors import BadRequest, FerryError, UnknownNode
from workers.ids import CONTAINER_NAME, MIGRATION_ID, NODE_NAME

CLUSTER = settings(
    max_examples=30,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
VICTIM = "victim"
CHANGES = ("ferry:mig", "ferry:active", "ferry:cordon:", "ferry:evac")

# Near misses: a good value with one thing wrong, and plain garbage.
WRONG = ["\n", "/", "../", " ", ";rm -rf /", "A", "$(reboot)", "\x00", "[/red]", "é", "*"]


def bad_text(pattern: Any, good: str) -> st.SearchStrategy[str]:
    """Strings ``pattern`` refuses: near misses of ``good``, and any text."""
    near = st.builds(
        lambda w, at: good[:at] + w + good[at:], st.sampled_from(WRONG), st.integers(0, len(good))
    )
    return st.one_of(near, st.text(max_size=80), st.just(""), st.just(good * 20)).filter(
        lambda s: not pattern.match(s)
    )


BAD_NAMES = bad_text(CONTAINER_NAME, "web-1.a_b")
BAD_NODES = bad_text(NODE_NAME, "pi-01")
BAD_IDS = bad_text(MIGRATION_ID, "m-0123456789ab")
GOOD_NAMES = st.from_regex(CONTAINER_NAME, fullmatch=True).filter(lambda s: "\n" not in s)
UNKNOWN_NODES = st.from_regex(NODE_NAME, fullmatch=True).filter(
    lambda s: "\n" not in s and s not in ("s1", "s2")
)
UNKNOWN_IDS = st.from_regex(MIGRATION_ID, fullmatch=True).filter(lambda s: "\n" not in s)
BAD_STRATEGIES = st.text(max_size=20).filter(lambda s: s not in (*STRATEGIES, "auto"))
NOT_POSITIVE = st.one_of(
    st.floats(max_value=0), st.just(math.nan), st.just(math.inf), st.just(-math.inf)
)
BAD_RATES = st.one_of(
    st.text(max_size=12).filter(lambda s: _refused(parse_rate, s)),
    st.sampled_from(
        ["0", "0M", "-5M", "nan", "inf", "1e3M", "50 furlongs", "800mbitz", "M", "1.M"]
    ),
)
BAD_PATHS = st.one_of(
    st.text(max_size=40).filter(lambda s: not s.startswith("/")),
    st.sampled_from(
        [
            "",
            "relative/dir",
            "./x",
            "../etc",
            "/tmp/../etc",
            "/tmp/x/../../etc",
            "/tmp//x",
            "/tmp/x\n",
        ]
    ),
)


def _refused(f: Callable[[str], object], value: str) -> bool:
    try:
        f(value)
    except BadRequest:
        return True
    return False


@pytest.fixture(scope="module")
def sim(sim_cluster: LocalCluster) -> Iterator[LocalCluster]:
    """The simulated cluster with one container, ``victim``, on s1."""
    sim_cluster.client.run("s1", ["sleep", "inf"], name=VICTIM)
    yield sim_cluster
    sim_cluster.client.kill(VICTIM)


def snapshot(c: LocalCluster) -> tuple[list[str], list[str], list[tuple[Any, ...]]]:
    """What a bad request must not change: records and their events, cordons,
    evacuations, every container (heartbeats and node records move on by themselves)."""
    r = c.client.store.r
    keys = sorted(str(k) for k in r.scan_iter("ferry:*") if str(k).startswith(CHANGES))
    containers = sorted((k["node"], k["name"], k["state"], k["pid"]) for k in c.client.containers())
    return keys, c.client.store.ids(1000), containers


def refused(
    c: LocalCluster, call: Callable[[], object], value: object, error: type[FerryError] = BadRequest
) -> None:
    """``call`` raises ``error`` naming ``value`` and changes nothing."""
    before = snapshot(c)
    with pytest.raises(error) as info:
        call()
    assert repr(value) in str(info.value) or str(value) in str(info.value), info.value
    assert snapshot(c) == before


def cli(c: LocalCluster, *argv: str) -> Any:
    env = {k: v for k, v in c.env.items() if k.startswith("FERRY_")}
    return CliRunner().invoke(main, list(argv), env=env, catch_exceptions=False)


def cli_refused(c: LocalCluster, argv: list[str], value: str) -> None:
    """``ferry ARGV`` exits 2 with an error naming ``value``, and changes nothing."""
    before = snapshot(c)
    res = cli(c, *argv)
    said = " ".join(res.output.split())
    assert res.exit_code == 2, (argv, res.exit_code, res.output)
    assert said.startswith("error:") or "Error: " in said, said
    shown = " ".join(repr(value).split())  # the message quotes the value
    assert shown in said or " ".join(value.split()) in said or "\x00" in value, (shown, said)
    assert snapshot(c) == before


# -- the API -----------------------------------------------------------------------------------


@CLUSTER
@given(name=BAD_NAMES)
def test_api_bad_container_names(sim, name: str) -> None:
    c = sim.client
    for call in (
        lambda: c.migrate(name, "s2"),
        lambda: c.run("s1", ["true"], name=name),
        lambda: c.kill(name),
        lambda: c.resolve(name, "s1"),
    ):
        refused(sim, call, name)


@CLUSTER
@given(node=BAD_NODES)
def test_api_bad_node_names(sim, node: str) -> None:
    c = sim.client
    for call in (
        lambda: c.migrate(VICTIM, node),
        lambda: c.run(node, ["true"]),
        lambda: c.cordon(node),
        lambda: c.evacuate(node, dry_run=True),
        lambda: c.evacuate("s1", to=[node], dry_run=True),
    ):
        refused(sim, call, node)


@CLUSTER
@given(node=UNKNOWN_NODES)
def test_api_unknown_nodes(sim, node: str) -> None:
    c = sim.client
    for call in (
        lambda: c.migrate(VICTIM, node),
        lambda: c.run(node, ["true"]),
        lambda: c.cordon(node),
    ):
        refused(sim, call, node, UnknownNode)


@CLUSTER
@given(mid=st.one_of(BAD_IDS, UNKNOWN_IDS))
def test_api_bad_or_unknown_migration_ids(sim, mid: str) -> None:
    c = sim.client
    for call in (lambda: c.status(mid), lambda: c.cancel(mid), lambda: list(c.watch(mid))):
        refused(sim, call, mid)
    if MIGRATION_ID.match(mid):  # anything else names a container to ferry resolve
        refused(sim, lambda: c.resolve(mid, "source"), mid)


@CLUSTER
@given(strategy=BAD_STRATEGIES)
def test_api_bad_strategies(sim, strategy: str) -> None:
    c = sim.client
    refused(sim, lambda: c.migrate(VICTIM, "s2", strategy=strategy), strategy)
    refused(sim, lambda: c.evacuate("s1", strategy=strategy, dry_run=True), strategy)


@CLUSTER
@given(value=NOT_POSITIVE, which=st.sampled_from(["downtime_limit_ms", "bandwidth_bps"]))
def test_api_numbers_must_be_finite_and_positive(sim, value: float, which: str) -> None:
    refused(sim, lambda: sim.client.migrate(VICTIM, "s2", **{which: value}), value)


@CLUSTER
@given(
    value=st.one_of(st.integers(max_value=0), st.floats(allow_nan=True), st.booleans()),
    which=st.sampled_from(["max_iterations", "max_parallel", "per_node"]),
)
def test_api_counts_must_be_whole_and_positive(sim, value: Any, which: str) -> None:
    if which == "max_iterations":
        refused(sim, lambda: sim.client.migrate(VICTIM, "s2", max_iterations=value), value)
    else:
        refused(sim, lambda: sim.client.evacuate("s1", dry_run=True, **{which: value}), value)


@CLUSTER
@given(
    goal=st.one_of(
        st.floats(max_value=0), st.floats(min_value=1, exclude_min=True), st.just(math.nan)
    )
)
def test_api_goal_is_a_share(sim, goal: float) -> None:
    refused(sim, lambda: sim.client.migrate(VICTIM, "s2", goal_unchanged=goal), goal)


@CLUSTER
@given(timeout=NOT_POSITIVE)
def test_api_durations(sim, timeout: float) -> None:
    refused(sim, lambda: sim.client.evacuate("s1", timeout=timeout, dry_run=True), timeout)


@CLUSTER
@given(rate=BAD_RATES)
def test_api_bad_bandwidths(sim, rate: str) -> None:
    refused(sim, lambda: sim.client.evacuate("s1", bandwidth=rate, dry_run=True), rate)


@CLUSTER
@given(path=BAD_PATHS)
def test_api_bad_sync_paths(sim, path: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    """The client refuses a relative path; the node (workers.dirsync.dirs, criu nodes only)
    the rest, before anything is started."""
    if not path.startswith("/"):
        refused(sim, lambda: sim.client.run("s1", ["true"], name="synced", sync=[path]), path)
        return
    base = tmp_path_factory.getbasetemp() / "sync"
    with pytest.raises(BadRequest) as info:
        check_dirs([path], [base / "root"], base / "work", exist=True)
    assert repr(path)[:200] in str(info.value) or path in str(info.value), info.value


@settings(max_examples=20, deadline=None, derandomize=True)
@given(
    parts=st.lists(
        st.from_regex(r"[a-z0-9_-]{1,12}", fullmatch=True).filter(lambda s: "\n" not in s),
        min_size=1,
        max_size=3,
    )
)
def test_good_sync_paths_are_accepted(
    parts: list[str], tmp_path_factory: pytest.TempPathFactory
) -> None:
    root = tmp_path_factory.getbasetemp() / "sync-good"
    d = root.joinpath(*parts)
    d.mkdir(parents=True, exist_ok=True)
    assert check_dirs([str(d)], [root], root / "work", exist=True) == (str(d),)


# -- good values are accepted ------------------------------------------------------------------


@given(
    num=st.integers(1, 10**6),
    prefix=st.sampled_from(["", "k", "M", "G", "m", "g"]),
    binary=st.booleans(),
    unit=st.sampled_from(["", "B", "bit", "b/s", "B/s"]),
)
def test_good_rates_round_trip(num: int, prefix: str, binary: bool, unit: str) -> None:
    i = "i" if binary and prefix else ""
    power = {"": 0, "k": 1, "m": 2, "g": 3}[prefix.lower()]
    want = num * (1024 if i else 1000) ** power / (8 if unit == "bit" else 1)
    assert parse_rate(f"{num}{prefix}{i}{unit}") == pytest.approx(want)


@settings(
    max_examples=8,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(name=GOOD_NAMES)
def test_good_container_names_round_trip(sim, name: str) -> None:
    """Started under its name, listed under it, killed by it."""
    if name == VICTIM:
        return
    res = cli(sim, "run", "--node", "s2", "--name", name, "--json", "--", "sleep", "inf")
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["name"] == name
    listed = json.loads(cli(sim, "ps", "--json").output)
    assert any(k["name"] == name and k["node"] == "s2" for k in listed)
    sim.client.kill(name)
    assert not any(k["name"] == name for k in sim.client.containers())


@settings(
    max_examples=4,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(limit=st.floats(1, 10_000), iterations=st.integers(1, 20), goal=st.floats(0.01, 1.0))
def test_good_limits_reach_the_record(sim, limit: float, iterations: int, goal: float) -> None:
    c = sim.client
    here = c.locate(VICTIM)
    m = c.migrate(
        VICTIM,
        "s2" if here == "s1" else "s1",
        "cold",
        downtime_limit_ms=limit,
        max_iterations=iterations,
        goal_unchanged=goal,
    ).wait(timeout=60)
    assert m.state.value == "done", m.errors
    assert (
        m.limits.downtime_limit_ms,
        m.limits.max_iterations,
        m.limits.goal_unchanged,
    ) == (limit, iterations, goal)


# -- the CLI -----------------------------------------------------------------------------------


@CLUSTER
@given(name=BAD_NAMES)
def test_cli_bad_container_names(sim, name: str) -> None:
    if name.startswith("-") or not name:
        return  # an option, or nothing: click's own usage error, tested below
    cli_refused(sim, ["migrate", name, "--to", "s2"], name)
    cli_refused(sim, ["run", "--node", "s1", "--name", name, "--", "true"], name)


@CLUSTER
@given(node=BAD_NODES)
def test_cli_bad_node_names(sim, node: str) -> None:
    if node.startswith("-") or not node:
        return
    cli_refused(sim, ["migrate", VICTIM, "--to", node], node)
    cli_refused(sim, ["cordon", node], node)
    cli_refused(sim, ["evacuate", node, "--dry-run"], node)


@CLUSTER
@given(mid=st.one_of(BAD_IDS, UNKNOWN_IDS))
def test_cli_bad_migration_ids(sim, mid: str) -> None:
    if mid.startswith("-") or not mid:
        return
    for command in ("status", "cancel", "watch"):
        cli_refused(sim, [command, mid], mid)


@CLUSTER
@given(strategy=BAD_STRATEGIES, where=st.sampled_from(["migrate", "evacuate"]))
def test_cli_bad_strategies(sim, strategy: str, where: str) -> None:
    argv = (
        ["migrate", VICTIM, "--to", "s2"] if where == "migrate" else ["evacuate", "s1", "--dry-run"]
    )
    cli_refused(sim, [*argv, f"--strategy={strategy}"], strategy)


@CLUSTER
@given(
    value=st.one_of(NOT_POSITIVE.map(str), st.text(max_size=10).filter(lambda s: not _positive(s))),
    option=st.sampled_from(["--timeout", "--downtime-limit"]),
)
def test_cli_durations_and_limits(sim, value: str, option: str) -> None:
    cli_refused(sim, ["migrate", VICTIM, "--to", "s2", f"{option}={value}"], value)


@CLUSTER
@given(
    value=st.one_of(st.integers(max_value=0).map(str), st.sampled_from(["1.5", "x", "nan"])),
    option=st.sampled_from(["--max-parallel", "--per-node"]),
)
def test_cli_counts(sim, value: str, option: str) -> None:
    cli_refused(sim, ["evacuate", "s1", "--dry-run", f"{option}={value}"], value)


@CLUSTER
@given(rate=BAD_RATES)
def test_cli_bad_bandwidths(sim, rate: str) -> None:
    cli_refused(sim, ["evacuate", "s1", "--dry-run", f"--bandwidth={rate}"], rate)


@CLUSTER
@given(path=BAD_PATHS.filter(lambda p: not p.startswith("/")))
def test_cli_bad_sync_paths(sim, path: str) -> None:
    """Relative ones: the client refuses them (absolute ones are the criu node's to check)."""
    cli_refused(
        sim, ["run", "--node", "s1", "--name", "synced", f"--sync={path}", "--", "true"], path
    )


def _positive(s: str) -> bool:
    try:
        return 0 < float(s) < math.inf
    except ValueError:
        return False


def test_an_unknown_option_before_the_command_is_refused_not_run(sim) -> None:
    # It used to become the program: `--rootfs` (then unknown) ran, died at once, and the
    # name was taken.
    cli_refused(
        sim, ["run", "--node", "s1", "--name", "x", "--image", "web:1", "--", "true"], "--image"
    )
    assert "x" not in {k["name"] for k in sim.client.containers()}
    res = cli(sim, "run", "--node", "s1", "--nme", "y", "--", "true")
    said = " ".join(res.output.split())
    assert res.exit_code == 2 and "Did you mean one of:" in said and "'--name'" in said


def test_what_follows_the_first_word_is_the_commands_own(sim) -> None:
    # `--help` after the program is the program's (sleep's), not ferry's
    res = cli(sim, "run", "--node", "s1", "--name", "own-opts", "--json", "sleep", "--help")
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["name"] == "own-opts"
    sim.client.kill("own-opts")


@pytest.mark.parametrize("argv", [["ps"], ["nodes"], ["status"]])
def test_with_redis_away_a_command_says_so_in_one_line_and_exits_3(argv: list[str]) -> None:
    env = {
        "FERRY_REDIS_URL": "redis://127.0.0.1:1/0",
        "FERRY_BROKER_URL": "redis://127.0.0.1:1/0",
        "FERRY_SECRET": "a-secret-so-that-only-redis-is-missing",
    }
    res = CliRunner().invoke(main, argv, env=env, catch_exceptions=False)
    assert res.exit_code == 3, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot reach Redis"), res.output
