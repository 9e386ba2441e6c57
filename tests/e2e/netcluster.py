"""A ferry cluster across network namespaces: each node a real ``ferry worker`` in its own netns.

    host    <prefix>-br  10.77.0.1   Redis (the broker, password), coordinator, client
      ├── node1  10.77.0.11          ferry worker --node node1 (data plane on 10.77.0.11)
      ├── node2  10.77.0.12          ferry worker --node node2
      └── ...

Every node's data plane binds and advertises its testbed address, so images
cross the node's shaped veth link, never loopback. The nodes share the mount
namespace, so the container root (``FERRY_SHARED_DIR``) is one host directory:
it models the shared storage of a real cluster. ``mounts`` gives nodes
node-local storage too (tasks.api.localcluster.private_mounts), ``extra`` settings
such as FERRY_RUNTIME=oci. A node mounts the host's cgroup hierarchies again
(:func:`host_cgroups`). Used by the e2e tests and by
``benchmarks/cold.py --testbed``.
"""

from __future__ import annotations

import os
import random
import socket
import string
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Self

import redis

from tasks.api.client import Ferry
from tasks.api.localcluster import ROOT, LocalCluster, private_mounts
from tests.testbed.cluster import Testbed
from tests.testbed.iproute import ip_json
from workers.errors import FerryError

SUBNET = "10.77.0"  # the one subnet a testbed may use on this machine


def host_cgroups() -> list[str]:
    """A command prefix: mount the host's cgroup hierarchies on /sys/fs/cgroup again.

    ``ip netns exec`` mounts a fresh /sys for the node, which hides them; runc
    (and CRIU dumping a container's cgroups) need them there, as on a real node.
    Each is mounted by its type and options, so it is the host's same hierarchy.
    """
    triples: list[str] = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields, _, tail = line.partition(" - ")
        path, (kind, _, options) = fields.split()[4], tail.split()
        if path == "/sys/fs/cgroup" or path.startswith("/sys/fs/cgroup/"):
            triples += [kind, options, path]
    script = (
        'while [ "$1" != -- ]; do mkdir -p "$3" && mount -t "$1" -o "$2" "$1" "$3" || exit 1; '
        'shift 3; done; shift; exec "$@"'
    )
    return ["sh", "-c", script, "sh", *triples, "--"]


def unique_prefix(stem: str = "fx") -> str:
    return stem + "".join(random.choices(string.ascii_lowercase + string.digits, k=3))


def subnet_in_use(subnet: str = SUBNET) -> str | None:
    """The interface that holds ``<subnet>.1`` (another testbed is up), or None."""
    for link in ip_json("-4", "addr", "show"):
        if any(a.get("local") == f"{subnet}.1" for a in link.get("addr_info", [])):
            return str(link["ifname"])
    return None


def wait_subnet_free(timeout: float, subnet: str = SUBNET) -> str | None:
    """Wait up to ``timeout`` s for another testbed to go down; the holder if it did not."""
    deadline = time.monotonic() + timeout
    while (holder := subnet_in_use(subnet)) and time.monotonic() < deadline:
        time.sleep(1)
    return holder


class NetCluster:
    """A Testbed, a Redis on its bridge, a coordinator on the host and a worker in every node."""

    def __init__(
        self,
        base: Path,
        nodes: int = 3,
        rate: str | None = "1gbit",
        prefix: str | None = None,
        secret: str | None = None,
        mounts: Mapping[str, Mapping[Path, Path]] | None = None,
        bridge: str | None = None,
        extra: Mapping[str, str] | None = None,
    ) -> None:
        self.base = base
        self.extra = dict(extra or {})  # settings every ferry process of it is given
        self.mounts = mounts or {}  # node -> {its own dir: the common path it is mounted on}
        self.bed = Testbed(
            prefix or unique_prefix(),
            nodes=nodes,
            subnet=SUBNET,
            rate=rate,
            delay_ms=0,
            bridge=bridge,
        )
        self.secret = secret or "e2e-" + "".join(random.choices(string.hexdigits, k=24))
        self.url = ""
        self.host: LocalCluster | None = None  # coordinator and client, on the host
        self.workers: dict[str, subprocess.Popen[bytes]] = {}
        self._logs: list[IO[bytes]] = []
        self.logs = base / "logs"
        self.shared = base / "shared"

    @property
    def nodes(self) -> list[str]:
        return self.bed.nodes

    @property
    def client(self) -> Ferry:
        assert self.host is not None, "NetCluster.up() first"
        return self.host.client

    def env(self) -> dict[str, str]:
        """What every ferry process of this cluster is given (no other FERRY_* leaks in)."""
        clean = {k: v for k, v in os.environ.items() if not k.startswith("FERRY_")}
        if "FERRY_CRIU_BIN" in os.environ:  # the CRIU the tests were told to use
            clean["FERRY_CRIU_BIN"] = os.environ["FERRY_CRIU_BIN"]
        if self.bed.bridge:
            clean["FERRY_BRIDGE"] = self.bed.bridge
        return {
            **clean,
            "FERRY_STATE_DIR": str(self.base),
            "FERRY_SHARED_DIR": str(self.shared),
            "FERRY_BROKER_URL": self.url,
            "FERRY_REDIS_URL": self.url,
            "FERRY_RESULT_BACKEND": self.url,
            "FERRY_SECRET": self.secret,
            "FERRY_HEARTBEAT_S": "0.5",
            "PYTHONPATH": str(ROOT),
            **self.extra,
        }

    def up(self, ready_timeout: float = 90) -> Self:
        """Bring the testbed, its Redis, the coordinator and every node's worker up."""
        self.logs.mkdir(parents=True, exist_ok=True)
        self.shared.mkdir(parents=True, exist_ok=True)
        self.bed.up()
        try:
            with socket.create_server((self.bed.host, 0)) as probe:
                port = probe.getsockname()[1]
            self.url = self.bed.start_redis(port)
            self.host = LocalCluster(self.base, self.env())
            self.host.start_coordinator()
            for node in self.nodes:
                self.start_node(node)
            self.host.wait_ready(self.nodes, timeout=ready_timeout)
        except BaseException:
            self.down()
            raise
        return self

    def start_node(self, node: str) -> None:
        """Start ``ferry worker --node <node>`` inside the node's namespace."""
        addr = self.bed.address(node)
        env = {**self.env(), "FERRY_LISTEN_HOST": addr, "FERRY_ADVERTISE_HOST": addr}
        log: IO[bytes] = open(self.logs / f"{node}.log", "ab")  # noqa: SIM115 (closed in down)
        self._logs.append(log)
        mounts = self.mounts.get(node)
        self.workers[node] = self.bed.exec(
            node,
            [
                *host_cgroups(),
                *(private_mounts(mounts) if mounts else ()),
                sys.executable,
                "-m",
                "tasks.api.cli",
                "worker",
                "--node",
                node,
            ],
            env=env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    def kill_containers(self) -> None:
        """Kill every container any node reported, by pid (the inventories may be stale)."""
        if self.host is None:
            return
        try:
            found = self.client.containers()
        except (FerryError, redis.RedisError):  # the broker may be gone; the netns sweep follows
            found = []
        for c in found:
            if c.get("pid", 0) > 0:
                subprocess.run(["kill", "-9", str(c["pid"])], capture_output=True, check=False)

    def down(self) -> None:
        """Stop everything this cluster started; safe to repeat."""
        self.kill_containers()
        for proc in self.workers.values():
            proc.terminate()
        for proc in self.workers.values():
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
        self.workers.clear()
        if self.host is not None:
            self.host.stop()
        self.bed.down()  # also kills whatever still runs in the namespaces, and the Redis
        for held in self.base.glob("nodes/*/netns/*"):  # containers' own network namespaces
            subprocess.run(["umount", str(held)], capture_output=True, check=False)
        for log in self._logs:
            log.close()
        self._logs.clear()

    def __enter__(self) -> Self:
        return self.up()

    def __exit__(self, *exc: object) -> None:
        self.down()
