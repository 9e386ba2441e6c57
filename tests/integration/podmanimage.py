"""Podman for tests and benchmarks, on one host: an image made here, a store per node.

``podman import`` of tests/integration/ocirootfs.py's rootfs into a store (no
registry); the ``podman run`` options a container needs on this machine:
``--runtime runc`` (crun as packaged has no CRIU) and, where root lacks
CAP_SYS_RESOURCE (a VM's limit: Podman's default nofile limit can then not be
set), ulimits that fit. Several nodes on one host each get a Podman of their own
with the same paths (as real nodes have): each worker runs in a private mount
namespace with its own directory mounted on :data:`COMMON`, their
FERRY_PODMAN_STORE, and :class:`NodePodman` runs ``podman`` in that namespace.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from workers.runtimes.podmancli import Podman

CAP_SYS_RESOURCE = 24
# Podman wants a runroot under 50 characters; clusters of other runs may share this
# path safely: each node's own dir is mounted on it in that node's namespace only.
COMMON = Path("/run/ferry-podman-test")
TAG = "localhost/ferry-test:py"


def may_raise_rlimits() -> bool:
    """Whether this process holds CAP_SYS_RESOURCE."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) >> CAP_SYS_RESOURCE & 1)
    return False


def podman_run_args() -> list[str]:
    """What ``podman run`` needs here beside the image and command."""
    args = ["--runtime", "runc", "--network", "none"]
    if not may_raise_rlimits():
        args += ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=4096:4096"]
    return args


def import_image(podman: Podman, rootfs: Path, tar: Path, tag: str = TAG) -> str:
    """``rootfs`` imported into ``podman``'s store as ``tag``; the image ID."""
    if not tar.exists():
        subprocess.run(["tar", "-C", str(rootfs), "-cf", str(tar), "."], check=True)
    return podman.ok("import", "--quiet", str(tar), tag).strip().removeprefix("sha256:")


@dataclass(frozen=True)
class NodePodman(Podman):
    """``podman`` as a node sees it: in the mount namespace of its worker (``pid``)."""

    pid: int = 0

    def argv(self, *args: str) -> list[str]:
        return ["nsenter", "--target", str(self.pid), "--mount", *super().argv(*args)]


def node_stores(base: Path, nodes: list[str], common: Path = COMMON) -> dict[str, dict[Path, Path]]:
    """LocalCluster's ``mounts``: each node's own dir under ``base`` on ``common`` (its
    Podman store; or another path each node has its own of, such as a runc root)."""
    common.mkdir(exist_ok=True)  # only a mount point
    for n in nodes:
        (base / f"{n}-{common.name}").mkdir(exist_ok=True)
    return {n: {base / f"{n}-{common.name}": common} for n in nodes}
