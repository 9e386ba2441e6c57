"""runc's containers in the oci runtime: one started by runc outside ferry, adopted by its ID.

``ferry adopt --node N runc:ID`` takes a container that ``runc --root ROOT run
--detach`` started (ROOT: the node's ``runc_root``, runc's own default
``/run/runc``) into the inventory. ferry then moves it with runc's checkpoint
and restore as it moves its own (cold, delta, post-copy), under the same root
and from the same bundle: the bundle (config.json and rootfs) must be at the
same path on the destination, as a shared container root gives it (post-copy
also needs its criu.conf: workers.runtimes.ocilazy.check_bundle). Its output
goes, after its first move, into ferry's log of it. What CRIU cannot dump is
refused here, before anything freezes, with the reason: a terminal, a host dir
bind-mounted in, a host device, stdio on a host file.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

from workers.errors import BadRequest
from workers.ids import check_container_name
from workers.runtimes import ocipodman
from workers.runtimes.ocibundle import OciEntry, memory_of
from workers.runtimes.podmancli import Podman

STDIO = ("stdin", "stdout", "stderr")


def refusal(cid: str, cfg: dict[str, Any], bundle: str, stdio: list[str]) -> str | None:
    """Why runc container ``cid`` (its config.json ``cfg``, its bundle dir, where its fds
    0-2 point) cannot be checkpointed; None if it can.

    >>> ok = {"process": {"terminal": False}, "mounts": [], "linux": {}}
    >>> refusal("web", ok, "/b", ["/dev/null", "pipe:[1]", "pipe:[1]"]) is None
    True
    >>> refusal("web", {**ok, "process": {"terminal": True}}, "/b", [])
    'runc container web has a terminal (process.terminal): CRIU cannot checkpoint a tty; run it without one'
    >>> refusal("web", {**ok, "mounts": [{"type": "bind", "source": "/srv", "destination": "/d"}]},
    ...         "/b", [])
    'runc container web bind-mounts host dir /srv on /d: a host dir does not move with it; keep it in the bundle'
    >>> refusal("web", ok, "/b", ["/dev/null", "/var/log/web.log", "pipe:[1]"])
    'runc container web has its stdout on host file /var/log/web.log, which CRIU cannot dump: start it with its stdio on pipes or /dev/null'
    """
    if cfg.get("process", {}).get("terminal"):
        return (
            f"runc container {cid} has a terminal (process.terminal): CRIU cannot "
            "checkpoint a tty; run it without one"
        )
    for m in cfg.get("mounts") or []:
        binds = m.get("type") == "bind" or {"bind", "rbind"} & set(m.get("options") or [])
        source = os.path.normpath(os.path.join(bundle, str(m.get("source", ""))))
        if binds and not source.startswith(os.path.normpath(bundle) + os.sep):
            return (
                f"runc container {cid} bind-mounts host dir {source} on {m.get('destination')}: "
                "a host dir does not move with it; keep it in the bundle"
            )
    for d in cfg.get("linux", {}).get("devices") or []:
        return (
            f"runc container {cid} has host device {d.get('path')}: a device cannot be checkpointed"
        )
    for std, target in zip(STDIO, stdio, strict=False):
        if target.startswith("/") and target != "/dev/null":
            what = "a terminal" if target.startswith(("/dev/pts/", "/dev/tty")) else "host file"
            return (
                f"runc container {cid} has its {std} on {what} {target}, which CRIU cannot "
                "dump: start it with its stdio on pipes or /dev/null"
            )
    return None


def entry(ref: str, podman: Podman, runc: str, runc_root: Path, container_root: Path) -> OciEntry:
    """The inventory entry of ``podman:NAME`` or ``runc:ID``, if ferry can move it
    (BadRequest saying why not)."""
    engine, _, name = ref.partition(":")
    if engine not in ("podman", "runc"):
        raise BadRequest(f"adopt {ref!r}: this node adopts podman:NAME or runc:ID")
    check_container_name(name)
    if engine == "podman":
        return OciEntry(**ocipodman.adopted(podman, name), engine="podman")
    return OciEntry(**adopted(runc, runc_root, name, container_root / name / "log"))


def adopted(runc: str, root: Path, cid: str, log: Path) -> dict[str, Any]:
    """The inventory entry's fields of runc container ``cid`` under ``root``, if it can
    be moved (BadRequest saying why not); ``log`` is where its output goes once moved."""
    out = subprocess.run(
        [runc, "--root", str(root), "state", cid],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    if out.returncode != 0:
        raise BadRequest(f"runc (--root {root}) on this node has no container {cid!r}")
    state = json.loads(out.stdout)
    if state.get("status") != "running":
        raise BadRequest(f"runc container {cid} is not running (it is {state.get('status')})")
    bundle, pid = str(state["bundle"]), int(state["pid"])
    cfg = json.loads((Path(bundle) / "config.json").read_text())
    stdio = [_fd(pid, n) for n in range(3)]
    why = refusal(cid, cfg, bundle, stdio)
    if why is not None:
        raise BadRequest(why)
    labels = {"oci.engine": "runc", "oci.rootfs": str(cfg.get("root", {}).get("path", ""))}
    if (memory := memory_of(cfg)) is not None:
        labels["oci.memory"] = str(memory)
    log.parent.mkdir(parents=True, exist_ok=True)
    return {
        "name": cid,
        "argv": tuple(str(a) for a in cfg.get("process", {}).get("args") or []),
        "bundle": bundle,
        "log": str(log),
        "started": time.time(),
        "labels": labels,
        "root": str(root),
    }


def _fd(pid: int, n: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/fd/{n}")
    except OSError:  # closed
        return ""
