"""docs/api.md runs as written: every ```python block, in order, in one namespace,
against the SIMULATED two-node cluster (``sim_cluster``: nodes s1 and s2)."""

from __future__ import annotations

import re

import pytest

from tasks.api.localcluster import ROOT

DOC = ROOT / "docs" / "api.md"
BLOCK = re.compile(r"^```python\n(.*?)^```$", re.MULTILINE | re.DOTALL)


def test_the_doc_has_examples() -> None:
    assert len(BLOCK.findall(DOC.read_text())) >= 8


def test_every_python_example_in_the_api_docs_runs(sim_cluster, monkeypatch) -> None:
    for key, value in sim_cluster.env.items():
        if key.startswith("FERRY_"):
            monkeypatch.setenv(key, value)
    ns: dict[str, object] = {"__name__": "api_docs"}
    for i, code in enumerate(BLOCK.findall(DOC.read_text()), 1):
        try:
            exec(compile(code, f"docs/api.md, block {i}", "exec"), ns)  # noqa: S102 (our own docs)
        except Exception as exc:  # noqa: BLE001 (whatever an example raises fails the docs)
            done = ns.get("done")
            pytest.fail(
                f"docs/api.md block {i} raised {exc!r}:\n{code}\n{getattr(done, 'errors', '')}"
            )
    report = ns["report"]
    assert isinstance(report, dict) and report["state"] == "cancelled"
    assert ns["done"].state.value == "done"  # type: ignore[attr-defined]
    assert ns["preview"].dry_run  # type: ignore[attr-defined]
