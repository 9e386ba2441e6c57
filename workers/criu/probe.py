"""What a node can do: probed once at worker start, published with its record."""

from __future__ import annotations

import os
import platform
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from workers import procs
from workers.criu import kernel as kern
from workers.criu.adapter import Criu
from workers.errors import CriuError
from workers.records import Capabilities, Need, tracker_of

FEATURES = ("mem_dirty_track", "uffd", "uffd-noncoop")


@dataclass(frozen=True)
class Probe:
    """A node's capabilities, as plain data."""

    arch: str  # the userland's (a 32-bit Pi OS on an aarch64 kernel is armv7l)
    bits: int  # the userland's word size
    page_size: int
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
    cgroup: str  # "2", "hybrid" or "1"
    unprivileged_userfaultfd: int | None  # vm.unprivileged_userfaultfd, None if absent
    kernel_config: dict[str, str] | None  # the options ferry reads, None: no config to read
    checks: dict[str, str]  # per requirement (workers.records.Need): how the probe knows
    lacks: tuple[Need, ...]  # the requirements found missing

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["lacks"] = [str(n) for n in self.lacks]
        return d


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
    found = kern.checks(PIPE_NEEDED)
    return Probe(
        arch=kern.userland_arch(),
        bits=kern.userland_bits(),
        page_size=os.sysconf("SC_PAGE_SIZE"),
        kernel=platform.release(),
        cpus=os.cpu_count() or 1,
        mem_total_bytes=total,
        mem_free_bytes=free,
        disk_free_bytes=shutil.disk_usage(state_dir).free,
        criu_version=version,
        criu_ok=ok,
        criu_reason="" if ok else ok_reason,
        soft_dirty=feats["mem_dirty_track"],
        uffd=feats["uffd"],
        uffd_noncoop=feats["uffd-noncoop"],
        pipe_max_size=kern.sysctl("fs.pipe-max-size") or 0,
        root=root,
        cgroup=kern.cgroup_version(),
        unprivileged_userfaultfd=kern.sysctl("vm.unprivileged_userfaultfd"),
        kernel_config=kern.kernel_config(),
        checks={str(n): c.how for n, c in found.items()},
        lacks=tuple(n for n, c in found.items() if not c.ok),
    )


PIPE_NEEDED = 4 << 20  # CRIU's page server asks for 4 MiB pipes


def capabilities(state_dir: Path, criu: Criu, allow_pipe_max_size: bool) -> Capabilities:
    """What the criu runtime can do on this node: :func:`probe`, then a real lazy round trip."""
    facts = probe(state_dir, criu)
    lazy, why = probe_lazy(criu, state_dir / "lazy-probe", facts, allow_pipe_max_size)
    return Capabilities(
        arch=facts.arch,
        criu_ok=facts.criu_ok,
        criu_reason=facts.criu_reason,
        soft_dirty=facts.soft_dirty,
        tracker=tracker_of(facts.soft_dirty, facts.lacks),
        lazy_pages=lazy,
        lazy_pages_reason=why,
        page_server=facts.criu_ok,
        bits=facts.bits,
        page_size=facts.page_size,
        kernel=facts.kernel,
        # a lazy round trip that passed raised fs.pipe-max-size where allowed
        lacks=tuple(n for n in facts.lacks if not (lazy and n is Need.PIPE_MAX_SIZE)),
        facts=facts.to_dict(),
    )


def probe_lazy(criu: Criu, scratch: Path, p: Probe, allow_raise: bool) -> tuple[bool, str]:
    """Whether post-copy (CRIU lazy pages) works here, and why not.

    The honest probe: a tiny real lazy migration of a sleeping process to
    this node itself. CRIU's page server needs 4 MiB pipes; without
    CAP_SYS_RESOURCE that takes fs.pipe-max-size >= 4 MiB, which ferry raises
    only where the operator allowed it (``allow_pipe_max_size``).
    """
    if not p.criu_ok:
        return False, p.criu_reason
    if Need.USERFAULTFD in p.lacks:
        return False, f"no userfaultfd: {p.checks[Need.USERFAULTFD]}"
    if not (p.uffd and p.uffd_noncoop):
        return False, "CRIU finds no userfaultfd it can use (uffd / uffd-noncoop)"
    if p.pipe_max_size < PIPE_NEEDED:
        if not allow_raise:
            return False, (
                f"fs.pipe-max-size is {p.pipe_max_size} < {PIPE_NEEDED}: raise it, or "
                "let ferry do it (allow_pipe_max_size / FERRY_ALLOW_PIPE_MAX_SIZE=1)"
            )
        try:
            Path("/proc/sys/fs/pipe-max-size").write_text(str(PIPE_NEEDED))
        except OSError as exc:
            return False, f"cannot raise fs.pipe-max-size: {exc}"
    return _lazy_round_trip(criu, scratch)


def _lazy_round_trip(criu: Criu, scratch: Path) -> tuple[bool, str]:
    shutil.rmtree(scratch, ignore_errors=True)
    (scratch / "src").mkdir(parents=True)
    launched = subprocess.run(
        [
            sys.executable,
            "-m",
            "workers.runtimes.launch",
            "--name",
            "lazyprobe",
            "--dir",
            str(scratch),
            "--log",
            str(scratch / "log"),
            "--",
            "sleep",
            "60",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=str(Path(__file__).resolve().parents[2]),
    )
    if not launched.stdout.strip().isdigit():
        return False, f"cannot start the probe process: {launched.stderr.strip()}"
    pid, restored = int(launched.stdout), 0
    try:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        criu.start_lazy_dump(pid, scratch / "src", "127.0.0.1", port, timeout_s=20)
        shutil.copytree(scratch / "src", scratch / "dst", ignore=shutil.ignore_patterns("*.log"))
        criu.start_lazy_pages(scratch / "dst", socket.create_connection(("127.0.0.1", port)))
        restored = criu.restore(scratch / "dst", extra=("--lazy-pages",)).pid
        log = scratch / "src" / "dump.log"
        for _ in range(1000):
            text = log.read_text(errors="replace")
            if "Dumping finished successfully" in text or "Dumping FAILED" in text:
                break
            time.sleep(0.01)
        if "Dumping finished successfully" not in log.read_text(errors="replace"):
            return False, f"a lazy migration to itself failed (see {log})"
        return procs.alive(restored), "" if procs.alive(
            restored
        ) else "the lazily restored probe died"
    except CriuError as exc:
        return False, f"a lazy migration to itself failed: {exc}"
    finally:
        for p in (pid, restored):
            if p:
                procs.kill_and_wait(p, 2)
