"""A Podman image for tests, made from this host (no registry): the OCI tests' rootfs.

``podman import`` of tests/integration/ocirootfs.py's rootfs into a store; and the
``podman run`` options a container needs on this machine: ``--runtime runc``
(crun as packaged has no CRIU) and, where root lacks CAP_SYS_RESOURCE (a VM's
limit: Podman's default nofile limit can then not be set), ulimits that fit.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from workers.runtimes.podmancli import Podman

CAP_SYS_RESOURCE = 24
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
