"""What a node can do: probed once at worker start, published with its record."""

from __future__ import annotations

import os
import platform
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from workers.criu import Criu

FEATURES = ("mem_dirty_track", "uffd", "uffd-noncoop")


@dataclass(frozen=True)
class Probe:
    """A node's capabilities, as plain data."""

    arch: str
    kernel: str
    cpus: int
    mem_total_bytes: int
    mem_free_bytes: int
    disk_free_bytes: int
    criu_version: str
    criu_ok: bool
    criu_reason: str
    soft_dirty: bool
    uffd: bool
    uffd_noncoop: bool
    pipe_max_size: int
    root: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def meminfo() -> tuple[int, int]:
    """(MemTotal, MemAvailable) in bytes."""
    values: dict[str, int] = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        key, _, rest = line.partition(":")
        values[key] = int(rest.split()[0]) * 1024
    return values.get("MemTotal", 0), values.get("MemAvailable", 0)


def probe(state_dir: Path, criu: Criu) -> Probe:
    """Probe this node: arch, kernel, memory, disk, CRIU and the kernel features it needs."""
    total, free = meminfo()
    state_dir.mkdir(parents=True, exist_ok=True)
    root = os.geteuid() == 0
    version = ok_reason = ""
    ok = False
    if shutil.which(criu.binary) and root:
        version = criu.version()
        ok, ok_reason = criu.check()
    elif not root:
        ok_reason = "not root: CRIU needs root"
    else:
        ok_reason = f"{criu.binary} not found: run ops/install-criu.sh"
    feats = {f: ok and criu.feature(f) for f in FEATURES}
    try:
        pipe_max = int(Path("/proc/sys/fs/pipe-max-size").read_text())
    except OSError:
        pipe_max = 0
    return Probe(arch=platform.machine(), kernel=platform.release(), cpus=os.cpu_count() or 1,
                 mem_total_bytes=total, mem_free_bytes=free,
                 disk_free_bytes=shutil.disk_usage(state_dir).free, criu_version=version,
                 criu_ok=ok, criu_reason="" if ok else ok_reason,
                 soft_dirty=feats["mem_dirty_track"], uffd=feats["uffd"],
                 uffd_noncoop=feats["uffd-noncoop"], pipe_max_size=pipe_max, root=root)
