"""compose.yaml: valid against the Compose specification, and runs only real ferry commands.

The schema is the Compose specification's own JSON schema, as vendored by the
check-jsonschema package (`docker compose config` needs a Docker engine).
"""

from __future__ import annotations

import json
import re
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click
import pytest

from tasks.api.cli import main
from tests.conftest import CI
from workers.ids import check_node_name

try:  # the test extra: PyYAML, and check-jsonschema (which brings jsonschema)
    import check_jsonschema  # noqa: F401
    import jsonschema
    import yaml
except ImportError as exc:
    if CI:
        raise
    pytest.skip(f"pip install -e '.[test]': {exc}", allow_module_level=True)

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "compose.yaml").read_text())
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
FERRY_SERVICES = {k: v for k, v in SERVICES.items() if k != "redis"}
WORKERS = {k: v for k, v in SERVICES.items() if v.get("command", [None, None])[1] == "worker"}


def compose_schema() -> dict[str, Any]:
    vendor = resources.files("check_jsonschema.builtin_schemas.vendor")
    schema: dict[str, Any] = json.loads((vendor / "compose-spec.json").read_text())
    return schema


def parse_ferry(argv: list[str]) -> click.Context:
    """Parse ``argv`` as the ferry CLI would, without running anything."""
    assert argv[0] == "ferry", argv
    cmd = main.get_command(click.Context(main), argv[1])
    assert cmd is not None, f"ferry has no command {argv[1]!r}"
    return cmd.make_context(argv[1], list(argv[2:]))


def env_example() -> dict[str, str]:
    lines = (ROOT / "ferry.env.example").read_text().splitlines()
    pairs = (ln.split("=", 1) for ln in lines if ln.strip() and not ln.startswith("#"))
    return {k: v for k, v in pairs}


def test_compose_yaml_is_valid_against_the_compose_specification() -> None:
    validator = jsonschema.Draft202012Validator(compose_schema())
    errors = [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in validator.iter_errors(COMPOSE)
    ]
    assert not errors, "\n".join(errors)


def test_the_schema_check_catches_a_broken_file() -> None:
    validator = jsonschema.Draft202012Validator(compose_schema())
    for broken in (
        {"image": "ferry:local", "comand": ["ferry", "coordinator"]},
        {"image": "ferry:local", "pid": 3},
        {"image": "ferry:local", "healthcheck": {"test": ["CMD"], "intervall": "3s"}},
    ):
        assert list(validator.iter_errors({"services": {"w": broken}})), broken


@pytest.mark.parametrize("name", sorted(FERRY_SERVICES))
def test_every_ferry_service_runs_a_real_ferry_command(name: str) -> None:
    parse_ferry(FERRY_SERVICES[name]["command"])


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_every_service_has_a_healthcheck_and_a_ferry_check_parses(name: str) -> None:
    test = SERVICES[name]["healthcheck"]["test"]
    assert test[0] in ("CMD", "CMD-SHELL")
    if test[0] == "CMD" and test[1] == "ferry":
        parse_ferry(test[1:])


def test_a_bad_command_would_be_caught() -> None:
    with pytest.raises(AssertionError):
        parse_ferry(["ferry", "wroker", "--node", "n1"])
    with pytest.raises(click.UsageError):
        parse_ferry(["ferry", "worker", "--nodes", "n1"])


def test_there_are_two_or_more_workers_with_distinct_valid_node_names() -> None:
    nodes = [parse_ferry(w["command"]).params["node"] for w in WORKERS.values()]
    assert len(nodes) >= 2 and len(set(nodes)) == len(nodes)
    for n in nodes:
        check_node_name(n)


@pytest.mark.parametrize("name", sorted(WORKERS))
def test_workers_get_what_criu_needs(name: str) -> None:
    w = WORKERS[name]
    assert w["privileged"] is True and w["pid"] == "host"
    mounts = {v.split(":")[1]: v for v in w["volumes"]}
    assert mounts["/lib/modules"].endswith(":ro")
    assert "/sys/fs/cgroup" in mounts and "/var/lib/ferry" in mounts
    shared = w["environment"]["FERRY_SHARED_DIR"]
    assert mounts[shared].split(":")[0] in COMPOSE["volumes"], "the shared dir: a shared volume"
    assert w["environment"]["FERRY_LISTEN_HOST"] == "0.0.0.0"
    assert w["environment"]["FERRY_ADVERTISE_HOST"] == name


def test_each_worker_keeps_its_own_state() -> None:
    states = [
        next(v for v in w["volumes"] if v.endswith(":/var/lib/ferry")) for w in WORKERS.values()
    ]
    assert len(set(states)) == len(states)


def test_one_env_file_carries_every_secret_and_the_passwords_agree() -> None:
    env = env_example()
    for key in (
        "FERRY_SECRET",
        "FERRY_BROKER_URL",
        "FERRY_REDIS_URL",
        "FERRY_FLOWER_AUTH",
        "REDIS_PASSWORD",
    ):
        assert env.get(key), f"ferry.env.example lacks {key}"
    for key in ("FERRY_BROKER_URL", "FERRY_REDIS_URL"):
        url = urlsplit(env[key])
        assert url.hostname == "redis" and url.password == env["REDIS_PASSWORD"], key
    for name, svc in SERVICES.items():
        assert svc["env_file"] == "ferry.env", name
    assert "CHANGE-ME" not in (ROOT / "compose.yaml").read_text()
    redis = " ".join(SERVICES["redis"]["command"])
    assert re.search(r'--requirepass "\$\$REDIS_PASSWORD"', redis), "password not from ferry.env"


def test_the_image_is_built_from_the_ops_dockerfile_with_the_criu_script() -> None:
    builds = {json.dumps(s.get("build"), sort_keys=True) for s in FERRY_SERVICES.values()}
    assert len(builds) == 1
    dockerfile = ROOT / json.loads(builds.pop())["dockerfile"]
    assert "ops/install-criu.sh" in dockerfile.read_text()
