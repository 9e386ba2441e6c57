"""Without root, a node says why containers cannot start, instead of unshare's errno."""

from __future__ import annotations

from pathlib import Path

import pytest

from workers.errors import CapabilityError
from workers.runtimes import criu
from workers.runtimes.criu import CriuRuntime


def test_a_node_without_root_says_containers_need_root_or_the_sim(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime = CriuRuntime(tmp_path / "state", tmp_path / "shared")
    monkeypatch.setattr(criu.os, "geteuid", lambda: 1000)  # the edge: who the node runs as
    with pytest.raises(CapabilityError, match="need root .* or FERRY_RUNTIME=sim"):
        runtime.start("web", ["sleep", "inf"])
    assert runtime.containers() == []  # nothing started, nothing recorded
