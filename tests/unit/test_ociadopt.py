"""What makes a runc container unmovable, decided from its config.json and where its stdio points."""

from __future__ import annotations

import doctest
from pathlib import Path
from typing import Any

import pytest

from workers.runtimes import ociadopt
from workers.runtimes.ocibundle import config, memory_of

OK = config("web", Path("/b/rootfs"), ["/bin/web"], 64 << 20)
PIPES = ["/dev/null", "pipe:[7]", "pipe:[7]"]


def test_ferrys_own_bundle_can_be_adopted() -> None:
    assert ociadopt.refusal("web", OK, "/b", PIPES) is None
    assert memory_of(OK) == 64 << 20 and memory_of({"linux": {}}) is None


@pytest.mark.parametrize(
    ("cfg", "stdio", "why"),
    [
        ({**OK, "process": {**OK["process"], "terminal": True}}, PIPES, "has a terminal"),
        (
            {**OK, "mounts": [{"destination": "/d", "source": "/srv", "options": ["rbind", "ro"]}]},
            PIPES,
            "bind-mounts host dir /srv on /d",
        ),
        (
            {**OK, "mounts": [{"destination": "/d", "type": "bind", "source": "../srv"}]},
            PIPES,
            "bind-mounts host dir /srv",  # relative to the bundle, and out of it
        ),
        ({**OK, "linux": {"devices": [{"path": "/dev/fuse"}]}}, PIPES, "host device /dev/fuse"),
        (OK, ["/dev/pts/3", "/dev/pts/3", "/dev/pts/3"], "its stdin on a terminal /dev/pts/3"),
        (OK, ["/dev/null", "/tmp/out", "pipe:[1]"], "its stdout on host file /tmp/out"),
    ],
)
def test_what_criu_cannot_dump_is_refused(cfg: dict[str, Any], stdio: list[str], why: str) -> None:
    got = ociadopt.refusal("web", cfg, "/b", stdio)
    assert got is not None and why in got


def test_a_bind_mount_from_inside_the_bundle_moves_with_it() -> None:
    cfg = {**OK, "mounts": [{"destination": "/d", "type": "bind", "source": "data"}]}
    assert ociadopt.refusal("web", cfg, "/b", PIPES) is None


def test_docstring_examples() -> None:
    assert doctest.testmod(ociadopt).failed == 0
