"""A request that waited (for a coordinator, say) never moves a container that was
restarted since it was asked, and a rollback of it resumes nothing that is gone."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from tasks.core.migration import Migration
from tasks.core.options import Options
from tasks.node import passes, phases
from tasks.node.context import NodeContext
from workers.errors import PermanentError
from workers.runtimes.sim import SimRuntime


@pytest.fixture
def ctx(tmp_path: Path) -> NodeContext:
    runtime = SimRuntime(tmp_path / "state", tmp_path / "shared")
    return NodeContext(
        node="a",
        runtime=runtime,
        node_dir=tmp_path / "node",
        address="127.0.0.1:1",
        secret=b"s" * 32,
        container_root=tmp_path / "shared",
    )


def asked(ctx: NodeContext, strategy: str = "cold") -> Migration:
    """A migration asked for the container ``web`` as it runs now."""
    started = ctx.runtime.start("web", ["sleep", "inf"]).started
    m = Migration(id="m-00000000000b", container="web", src="a", dst="b")
    return replace(m, options=replace(Options(), container_started=started))


@pytest.mark.parametrize("phase", [phases.dump, passes.precopy])
def test_a_container_restarted_since_it_was_asked_is_not_frozen(ctx: NodeContext, phase) -> None:
    m = asked(ctx)
    ctx.runtime.kill("web")
    now = ctx.runtime.start("web", ["sleep", "inf"])  # same name, another process
    with pytest.raises(PermanentError, match="restarted since this migration was asked"):
        phase(ctx, m, lambda _: None)
    assert (
        ctx.runtime.get("web").state == "running" and ctx.runtime.get("web").started == now.started
    )
    assert not ctx.images(m.id).parent.exists()  # nothing dumped


def test_rolling_back_a_request_whose_container_is_gone_resumes_nothing(ctx: NodeContext) -> None:
    m = asked(ctx)
    ctx.runtime.kill("web")
    assert phases.resume(ctx, m, lambda _: None)["state"] == "gone"
