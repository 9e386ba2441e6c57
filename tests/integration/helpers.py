"""Small helpers for tests that run real containers."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

from workers import procs

COUNTER = (
    "import time\ni = 0\nwhile True:\n    print('tick', i, flush=True)\n"
    "    i += 1\n    time.sleep(0.05)\n"
)


def ticks(log: str | Path) -> list[int]:
    """The counter's values in its log; a line still being written is left out."""
    text = Path(log).read_text()
    lines = text.splitlines()[: None if text.endswith("\n") else -1]
    return [
        int(p[1])
        for p in (ln.split() for ln in lines)
        if len(p) >= 2 and p[0] == "tick" and p[1].isdigit()
    ]


def cgroup_memory_limit(pid: int) -> int:
    """The memory limit the kernel holds for ``pid``'s cgroup (v2, or v1's memory controller)."""
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            text = Path(f"/sys/fs/cgroup{path}/memory.max").read_text().strip()
            return -1 if text == "max" else int(text)
        if "memory" in controllers.split(","):
            return int(Path(f"/sys/fs/cgroup/memory{path}/memory.limit_in_bytes").read_text())
    raise AssertionError(f"no memory cgroup for {pid}")


def limit_of(client: Any, name: str) -> int:
    """The memory limit of container ``name``'s cgroup, wherever ``client``'s cluster runs it."""
    pids = [c["pid"] for c in client.containers() if c["name"] == name and c["pid"] > 0]
    assert len(pids) == 1, f"{name} runs {len(pids)} times"
    return cgroup_memory_limit(pids[0])


def wait_for(pred, timeout: float = 10.0, every: float = 0.05):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout} s waiting for {pred}")


def assert_went_on(values: list[int], before: int) -> None:
    """The counter never went back and went past where it was at the freeze."""
    assert values == sorted(values), "the counter went backwards: two copies ran, or it restarted"
    assert len(values) == len(set(values)), "a value was printed twice: two copies ran"
    assert values[-1] > before


DIRTY = (
    "import time\n"
    "data = bytearray(b'x') * ({mb} << 20)\n"
    "i = 0\n"
    "while True:\n"
    "    for p in range(i % 16, len(data) // 4096, {stride}):\n"
    "        data[p * 4096] = i % 251\n"
    "    print('tick', i, flush=True); i += 1; time.sleep(0.05)\n"
)


def dirtying(mb: int = 32, stride: int = 16) -> str:
    """A counter that holds ``mb`` MiB and rewrites one page in ``stride`` every tick."""
    return DIRTY.format(mb=mb, stride=stride)


VERIFYING = (
    "import os, random, time\n"
    "TAG = 'tick'\n"
    "{fork}"
    "P = 4096\n"
    "N = ({mb} << 20) // P\n"
    "PAGES = [bytes([v]) * P for v in range(256)]\n"
    "exp = bytearray(p % 255 + 1 for p in range(N))\n"
    "buf = bytearray(b''.join(PAGES[v] for v in exp))\n"
    "i = 0\n"
    "while True:\n"
    "    for p in random.sample(range(N), max(1, N * {percent} // 100)):\n"
    "        exp[p] = exp[p] % 255 + 1\n"
    "        buf[p * P:(p + 1) * P] = PAGES[exp[p]]\n"
    "    bad = sum(buf[p * P:(p + 1) * P] != PAGES[exp[p]] for p in range(N))\n"
    "    print(TAG, i, 'bad', bad, flush=True) if bad else print(TAG, i, 'ok', flush=True)\n"
    "    i += 1; time.sleep(0.05)\n"
)


def verifying(mb: int = 32, percent: int = 2, fork: bool = False) -> str:
    """A counter holding ``mb`` MiB of pages it knows; every tick it rewrites ``percent`` % of
    them and checks every page, printing ``tick N ok`` or ``tick N bad K`` (K pages wrong).
    ``fork``: a child forked first does the same with pages of its own, printing ``kid ...``."""
    child = "TAG = 'kid' if os.fork() == 0 else TAG\n" if fork else ""
    return VERIFYING.format(mb=mb, percent=percent, fork=child)


def bad_ticks(log: str | Path) -> list[str]:
    """The lines where a verifying counter found its memory wrong."""
    return [ln for ln in Path(log).read_text().splitlines() if " bad " in ln]


def free_port() -> int:
    """A TCP port on loopback that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def celery_workers(cluster, node: str) -> set[int]:  # type: ignore[no-untyped-def]
    """The node's Celery worker processes (its containers are its children too)."""
    out = set()
    for pid in procs.tree(cluster.procs[node].pid)[1:]:
        try:
            if b"tasks.node.worker" in Path(f"/proc/{pid}/cmdline").read_bytes():
                out.add(pid)
        except OSError:
            continue
    return out
