"""A ferry cluster of real processes on this machine: for the demo, tests and benchmarks.

Each node is a real ``ferry worker`` with its own state dir, queues and
data-plane listener; they share one broker and the container root. A node
may get node-local storage: it runs in a private mount namespace where its
own directory is bind-mounted on a path common to all nodes (``mounts``), so
one path holds different content on each node, as on separate machines.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import redis

from tasks.api.client import Ferry
from tasks.config.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


class LocalCluster:
    """Coordinator, node workers and Flower as child processes, logs in ``base/logs``."""

    def __init__(
        self,
        base: Path,
        env: Mapping[str, str],
        mounts: Mapping[str, Mapping[Path, Path]] | None = None,
    ) -> None:
        self.base = base
        self.mounts = mounts or {}  # node -> {its own dir: the common path it is mounted on}
        self.env = {**os.environ, **env, "FERRY_STATE_DIR": str(base)}
        self.env.setdefault("FERRY_HEARTBEAT_S", "0.5")
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.logs = base / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self._client: Ferry | None = None

    @property
    def client(self) -> Ferry:
        if self._client is None:
            self._client = Ferry(Settings.from_env(self.env))
            self.env["FERRY_SECRET"] = self._client.settings.secret
        return self._client

    def spawn(
        self, key: str, *argv: str, env: Mapping[str, str] | None = None, prefix: Sequence[str] = ()
    ) -> subprocess.Popen[bytes]:
        _ = self.client  # resolve the broker and secret before any child starts
        with open(self.logs / f"{key}.log", "ab") as log:  # the child keeps its own copy
            proc = subprocess.Popen(
                [*prefix, sys.executable, "-m", "tasks.api.cli", *argv],
                env={**self.env, **(env or {})},
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
            )
        self.procs[key] = proc
        return proc

    def start_node(self, name: str, env: Mapping[str, str] | None = None) -> None:
        mounts = self.mounts.get(name)
        self.spawn(
            name, "worker", "--node", name, env=env, prefix=private_mounts(mounts) if mounts else ()
        )

    def start_coordinator(self) -> None:
        self.spawn("coordinator", "coordinator")

    def start_flower(self, port: int, auth: str) -> None:
        self.spawn("flower", "flower", "--port", str(port), "--basic-auth", auth)

    def wait_ready(self, nodes: list[str], timeout: float = 60) -> None:
        """Until every node is up with both its workers, and the coordinator beats."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                up = {n.name for n in self.client.nodes() if n.alive}
                ping = self.client.app.control.ping(timeout=0.5) or []
            except redis.RedisError:  # the broker restarts: this client reconnects next round
                time.sleep(0.2)
                continue
            workers = " ".join(k for r in ping for k in r)
            if (
                set(nodes) <= up
                and self.client.store.coordinator_alive()
                and all(f"urgent.{n}@" in workers and f"main.{n}@" in workers for n in nodes)
            ):
                return
            time.sleep(0.2)
        raise TimeoutError(f"the cluster did not come up in {timeout:.0f} s; logs in {self.logs}")

    def stop(self, key: str | None = None) -> None:
        keys = [key] if key else list(self.procs)
        for k in keys:
            self.procs[k].terminate()
        for k in keys:
            try:
                self.procs[k].wait(15)
            except subprocess.TimeoutExpired:
                self.procs[k].kill()
            del self.procs[k]

    def cli(self, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "tasks.api.cli", *argv],
            env=self.env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
        )


def private_mounts(mounts: Mapping[Path, Path]) -> list[str]:
    """A command prefix: run in a private mount namespace with each dir bind-mounted (needs root)."""
    # The paths are the shell's arguments, never part of its script.
    script = (
        'while [ "$1" != -- ]; do mount --bind "$1" "$2" || exit 1; shift 2; done; shift; exec "$@"'
    )
    pairs = [str(p) for own, common in mounts.items() for p in (own, common)]
    return [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "--",
        "sh",
        "-c",
        script,
        "sh",
        *pairs,
        "--",
    ]
