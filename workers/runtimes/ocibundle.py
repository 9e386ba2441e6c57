"""An OCI bundle for one ferry container: its config.json, checked rootfs, limits.

What ``runc spec`` would write, cut to what CRIU can move: no terminal, own
mount, pid, ipc and uts namespaces, a network namespace with only its
loopback, a memory limit in the container's own cgroup (``/ferry/<name>``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workers.errors import BadRequest
from workers.runtimes.launch import BASE_PATH

MOUNTS: list[dict[str, Any]] = [
    {"destination": "/proc", "type": "proc", "source": "proc"},
    {
        "destination": "/dev",
        "type": "tmpfs",
        "source": "tmpfs",
        "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
    },
    {
        "destination": "/dev/pts",
        "type": "devpts",
        "source": "devpts",
        "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"],
    },
    {
        "destination": "/dev/shm",
        "type": "tmpfs",
        "source": "shm",
        "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
    },
    {
        "destination": "/sys",
        "type": "sysfs",
        "source": "sysfs",
        "options": ["nosuid", "noexec", "nodev", "ro"],
    },
]
CAPS = ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]
# runc hands CRIU only the port of a lazy dump's page server, which then listens on
# every address; a CRIU config file named by this annotation binds it to loopback
CRIU_CONFIG = "org.criu.config"
CRIU_CONF = "criu.conf"
LOOPBACK_CONF = "address 127.0.0.1\n"


def parse_size(text: str) -> int:
    """Bytes in ``512M``, ``1G``, ``65536``.

    >>> parse_size("512M"), parse_size("1g"), parse_size("4096")
    (536870912, 1073741824, 4096)
    """
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    t = text.strip().lower()
    mult = units.get(t[-1:], 1)
    digits = t[:-1] if t[-1:] in units else t
    if not digits.isdigit() or int(digits) == 0:
        raise BadRequest(f"bad size {text!r}: use e.g. 512M, 1G or a number of bytes")
    return int(digits) * mult


def check_rootfs(rootfs: Path) -> Path:
    """``rootfs`` resolved, if it is a directory none of whose symlinks points out of it."""
    if not rootfs.is_absolute():
        raise BadRequest(f"rootfs {rootfs} must be an absolute path")
    if not rootfs.is_dir():
        raise BadRequest(f"rootfs {rootfs} is not a directory on this node")
    root = rootfs.resolve()
    for here, dirs, files in os.walk(root):
        for item in dirs + files:
            path = Path(here) / item
            if not path.is_symlink():
                continue
            target = os.readlink(path)
            inside = root / target.lstrip("/") if target.startswith("/") else Path(here) / target
            if not os.path.normpath(inside).startswith(str(root) + os.sep) and (
                os.path.normpath(inside) != str(root)
            ):
                raise BadRequest(
                    f"rootfs {rootfs}: symlink {path.relative_to(root)} -> {target} escapes it"
                )
    return root


def check_start(
    argv: list[str], labels: dict[str, str], sync: tuple[str, ...], net: str
) -> tuple[Path, int | None]:
    """The checked rootfs and memory limit (bytes) of a container to start; BadRequest why not."""
    if net:
        raise BadRequest("--net needs a criu node; this one runs oci")
    if not argv or not all(isinstance(a, str) and "\0" not in a for a in argv):
        raise BadRequest("a container needs a command: ferry run --node N -- CMD ...")
    if sync:
        raise BadRequest("the oci runtime does not sync directories yet: drop --sync")
    if labels.get("oci.tty", "") not in ("", "false"):
        raise BadRequest("a tty container cannot be checkpointed: run it without a terminal")
    if "oci.rootfs" not in labels:
        raise BadRequest("an oci container needs a rootfs: ferry run --rootfs DIR")
    rootfs = check_rootfs(Path(labels["oci.rootfs"]))
    return rootfs, parse_size(labels["oci.memory"]) if labels.get("oci.memory") else None


def config(
    name: str, rootfs: Path, argv: list[str], memory: int | None, parent: str = "/ferry"
) -> dict[str, Any]:
    """The config.json of container ``name`` running ``argv`` in ``rootfs``, its cgroup
    ``<parent>/<name>``."""
    resources: dict[str, Any] = {"devices": [{"allow": False, "access": "rwm"}]}
    if memory is not None:
        resources["memory"] = {"limit": memory}
    return {
        "ociVersion": "1.0.2-dev",
        "process": {
            "terminal": False,
            "user": {"uid": 0, "gid": 0},
            "args": argv,
            "env": [f"PATH={BASE_PATH}", f"HOSTNAME={name}", "LANG=C.UTF-8", "TERM=dumb"],
            "cwd": "/",
            "capabilities": {k: CAPS for k in ("bounding", "effective", "permitted")},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": True,
        },
        "root": {"path": str(rootfs), "readonly": False},
        "hostname": name,
        "mounts": MOUNTS,
        "linux": {
            "resources": resources,
            "cgroupsPath": f"{parent}/{name}",
            "namespaces": [{"type": t} for t in ("pid", "network", "ipc", "uts", "mount")],
            "maskedPaths": ["/proc/kcore", "/proc/keys", "/proc/timer_list", "/sys/firmware"],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys"],
        },
    }


def write_bundle(bundle: Path, cfg: dict[str, Any]) -> None:
    """``cfg`` as ``bundle``'s config.json, with the CRIU config that keeps a lazy
    dump's page server on loopback (:func:`lazy_on_loopback`)."""
    bundle.mkdir(parents=True, exist_ok=True)
    (bundle / CRIU_CONF).write_text(LOOPBACK_CONF)
    notes = {**cfg.get("annotations", {}), CRIU_CONFIG: str(bundle / CRIU_CONF)}
    tmp = bundle / "config.json.tmp"
    tmp.write_text(json.dumps({**cfg, "annotations": notes}, indent=1))
    os.replace(tmp, bundle / "config.json")


def lazy_on_loopback(bundle: Path) -> bool:
    """Whether runc's CRIU keeps a lazy dump of ``bundle``'s container listening on
    loopback only (behind the data plane's token: workers.dataplane.lazylink)."""
    try:
        cfg = json.loads((bundle / "config.json").read_text())
        named = Path(cfg.get("annotations", {}).get(CRIU_CONFIG, ""))
        return named == bundle / CRIU_CONF and named.read_text() == LOOPBACK_CONF
    except (OSError, ValueError, AttributeError):
        return False


def memory_of(cfg: dict[str, Any]) -> int | None:
    """The memory limit a config.json sets, in bytes; None for none."""
    limit = cfg.get("linux", {}).get("resources", {}).get("memory", {}).get("limit")
    return int(limit) if isinstance(limit, int) and limit > 0 else None


def here(bundle: Path, local: Path, parent: str) -> Path:
    """A bundle for restoring ``bundle``'s container on this node: ``local``, its config.json
    the same but for its cgroup (``<parent>/<name>``) and its paths made absolute. Each
    node's containers have their cgroups under its own parent (``/ferry/<node>``), so a
    source paused by a streamed dump (workers.runtimes.ocipages) and its restored copy
    never share one where two nodes share a host (runc will not restore into a frozen one)."""
    cfg = json.loads((bundle / "config.json").read_text())
    cfg["root"]["path"] = os.path.join(bundle, cfg["root"]["path"])
    for m in cfg.get("mounts") or []:  # a bind's relative source is in the bundle
        binds = m.get("type") == "bind" or {"bind", "rbind"} & set(m.get("options") or [])
        if binds and not os.path.isabs(m.get("source", "/")):
            m["source"] = os.path.normpath(os.path.join(bundle, m["source"]))
    cfg.setdefault("linux", {})["cgroupsPath"] = f"{parent}/{local.name}"
    write_bundle(local, cfg)
    return local


@dataclass(frozen=True)
class OciEntry:
    """The inventory entry of an oci container: its bundle, or the container adopted."""

    name: str
    argv: tuple[str, ...]
    bundle: str
    log: str
    started: float
    labels: dict[str, str] = field(default_factory=dict)
    state: str = "running"  # running | frozen (checkpointed, no process left)
    engine: str = "runc"  # runc (ferry's bundle, or adopted by ID) | podman (Podman's container)
    image: str = ""  # podman: its image's ID
    root: str = ""  # runc: the --root of a container adopted by ID; "": ferry's own

    @property
    def adopted(self) -> bool:
        """Whether the container was started outside ferry (release hands it back)."""
        return self.engine == "podman" or bool(self.root)
