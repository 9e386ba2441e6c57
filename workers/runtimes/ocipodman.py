"""Podman's containers in the oci runtime: adopted, and moved by Podman's own checkpoint.

Podman keeps its own state of a container (its database entry, config, conmon,
log and writable layer); restoring CRIU's images behind its back with runc
would leave Podman believing the container had exited. So ferry moves a Podman
container the way Podman can account for it: ``podman container checkpoint
--export`` writes one archive (CRIU's images, the container's config, the
changes of its writable layer, its named volumes), ferry carries the archive
over its own data plane (token, BLAKE3, bandwidth budget, compression, delta
passes) and ``podman container restore --import`` on the destination makes the
container Podman's there: the same ID, name and image. The checkpoint is kept
(``--keep``) on the source, so a rollback restores it in place, and the source's
container is removed only after the point of no return. An image the
destination's Podman lacks travels with the first checkpoint (``podman image
save``, then ``load``), found by its ID.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from workers.errors import BadRequest, PermanentError
from workers.records import DumpStats, RestoreStats
from workers.runtimes.ocibundle import OciEntry
from workers.runtimes.podmancli import Podman, check_image_id, check_image_ref

ARCHIVE = "podman.tar"  # the checkpoint, in a migration's images dir
IMAGE = "image.tar"  # the container's image, where the destination lacks it


def refusal(name: str, c: dict[str, Any]) -> str | None:
    """Why Podman container ``c`` (``podman container inspect``) cannot be checkpointed; None if it can.

    >>> ok = {"State": {"Running": True}, "Config": {"Tty": False}, "Mounts": [],
    ...       "HostConfig": {"Devices": []}}
    >>> refusal("web", ok) is None
    True
    >>> refusal("web", {**ok, "Config": {"Tty": True}})
    'podman container web has a terminal (podman run -t): CRIU cannot checkpoint a tty; run it without -t'
    >>> refusal("web", {**ok, "Mounts": [{"Type": "bind", "Source": "/srv", "Destination": "/data"}]})
    'podman container web bind-mounts host dir /srv on /data: a host dir does not move with it; use a named volume'
    """
    state = c.get("State", {})
    if not state.get("Running"):
        return f"podman container {name} is not running (it is {state.get('Status', 'gone')})"
    if c.get("Config", {}).get("Tty"):
        return (
            f"podman container {name} has a terminal (podman run -t): CRIU cannot checkpoint "
            "a tty; run it without -t"
        )
    for m in c.get("Mounts") or []:
        if m.get("Type") == "bind":
            return (
                f"podman container {name} bind-mounts host dir {m.get('Source')} on "
                f"{m.get('Destination')}: a host dir does not move with it; use a named volume"
            )
    for d in c.get("HostConfig", {}).get("Devices") or []:
        return (
            f"podman container {name} has host device {d.get('PathOnHost')}: "
            "a device cannot be checkpointed"
        )
    return None


def crun_lacks_criu(runtime: str) -> bool:
    """Whether the OCI runtime Podman runs a container with is a crun built without CRIU."""
    if Path(runtime).name != "crun" or shutil.which(runtime) is None:
        return False
    out = subprocess.run([runtime, "--version"], capture_output=True, text=True, check=False)
    return "+CRIU" not in out.stdout


def check_adoptable(podman: Podman, name: str) -> dict[str, Any]:
    """``podman container inspect`` of ``name`` if ferry can move it; BadRequest saying why not."""
    if not podman.installed():
        raise BadRequest(f"podman is not installed on this node ({podman.binary})")
    c = podman.inspect(name)
    if c is None:
        raise BadRequest(f"Podman on this node has no container named {name!r}")
    why = refusal(name, c)
    if why is None and crun_lacks_criu(str(c.get("OCIRuntime", ""))):
        why = (
            f"podman container {name} runs under crun, which was built without CRIU: "
            "run it with --runtime runc"
        )
    if why is None and not podman.has_image(str(c.get("Image", ""))):
        why = f"the image of podman container {name} ({c.get('ImageName')}) is gone from its store"
    if why is not None:
        raise BadRequest(why)
    return c


def adopted(podman: Podman, name: str) -> dict[str, Any]:
    """The inventory entry's fields of Podman container ``name``, if it can be moved."""
    c = check_adoptable(podman, name)
    labels = {"oci.engine": "podman", "oci.image": str(c.get("ImageName", ""))}
    memory = int(c.get("HostConfig", {}).get("Memory") or 0)
    if memory:
        labels["oci.memory"] = str(memory)
    return {
        "name": name,
        "argv": tuple(str(a) for a in [c.get("Path", ""), *(c.get("Args") or [])] if a),
        "bundle": "",
        "log": str(c.get("HostConfig", {}).get("LogConfig", {}).get("Path") or ""),
        "started": time.time(),
        "labels": labels,
        "image": check_image_id(str(c["Image"])),
    }


def state_of(podman: Podman, name: str) -> tuple[str, int]:
    """Podman's status of ``name`` (``gone`` when it has none) and its init's pid."""
    c = podman.inspect(name)
    if c is None:
        return "gone", 0
    return str(c["State"]["Status"]), int(c["State"].get("Pid") or 0)


def checkpoint(podman: Podman, name: str, images: Path, leave_running: bool) -> DumpStats:
    """Podman's checkpoint of ``name`` as ``images/podman.tar``, and CRIU's numbers of it."""
    images.mkdir(parents=True, exist_ok=True)
    archive = images / ARCHIVE
    out = podman.checkpoint(name, archive, leave_running=leave_running)
    try:
        doc = json.loads(out)
        wall = doc["podman_checkpoint_duration"] / 1000
        ctr = doc["container_statistics"][0]
        crit = ctr["criu_statistics"]
        # Podman writes the archive after CRIU's dump, the container already stopped:
        # that time is frozen too (a leave-running pass's container runs on meanwhile)
        export_ms = 0.0 if leave_running else wall - ctr["runtime_checkpoint_duration"] / 1000
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise PermanentError(f"podman checkpoint {name}: unreadable stats: {out[:200]}") from exc
    return DumpStats(
        freezing_ms=crit.get("freezing_time", 0) / 1000,
        frozen_ms=crit.get("frozen_time", 0) / 1000 + max(export_ms, 0.0),
        memdump_ms=crit.get("memdump_time", 0) / 1000,
        memwrite_ms=crit.get("memwrite_time", 0) / 1000,
        pages_scanned=crit.get("pages_scanned", 0),
        pages_skipped_parent=0,
        pages_written=crit.get("pages_written", 0),
        pages_lazy=0,
        wall_ms=wall,
        image_bytes=archive.stat().st_size,
    )


def carry_image(podman: Podman, image_id: str, into: Path, present: list[str]) -> int:
    """``podman image save`` of ``image_id`` into ``into`` unless the destination has it
    (``present``: the IDs its Podman holds); the bytes written."""
    bare = check_image_id(image_id)
    if bare in {p.removeprefix("sha256:") for p in present}:
        return 0
    into.mkdir(parents=True, exist_ok=True)
    podman.ok("image", "save", "--output", str(into / IMAGE), bare)
    return (into / IMAGE).stat().st_size


def restore(podman: Podman, name: str, entry: OciEntry, images: Path) -> RestoreStats:
    """Make Podman here run ``name`` (``entry``) from the checkpoint in ``images``."""
    began = time.monotonic()
    _restore(podman, name, entry.image, entry.labels.get("oci.image", ""), images)
    pid = state_of(podman, name)[1]
    return RestoreStats(pid, 0.0, 0.0, 0, (time.monotonic() - began) * 1000)


def _restore(podman: Podman, name: str, image_id: str, image_name: str, images: Path) -> None:
    """Podman's import of ``images``: the image loaded first where missing, and known here
    by the name the container was made with (Podman's import looks it up by that name). A
    restore is inside the freeze: where the image is here by that name already, one podman
    call checks it all (PREPARE checked the name)."""
    bare, ref = check_image_id(image_id), check_image_ref(image_name or image_id)
    if image_of(podman, ref) == bare:
        podman.restore_import(images / ARCHIVE)
        return
    if not podman.has_image(bare):
        if not (images / IMAGE).exists():
            raise PermanentError(f"the image {bare[:12]} of {name!r} is not on this node")
        podman.ok("image", "load", "--quiet", "--input", str(images / IMAGE))
        if not podman.has_image(bare):
            raise PermanentError(f"the image loaded for {name!r} is not {bare[:12]}")
    here = image_of(podman, ref)
    if here is None:
        podman.ok("tag", bare, ref)
    elif here != bare:
        raise PermanentError(f"{ref} is another image on this node than {name!r} was made of")
    podman.restore_import(images / ARCHIVE)


def image_of(podman: Podman, ref: str) -> str | None:
    """The ID of the image ``ref`` names in this Podman; None where it names none."""
    out = podman.call("image", "inspect", "--format", "{{.Id}}", "--", ref, timeout=60)
    return out.stdout.strip().removeprefix("sha256:") if out.returncode == 0 else None


def admit(podman: Podman, name: str) -> dict[str, Any]:
    """Refuse a container ``name`` arriving here that this node's Podman has already;
    the image IDs it holds (the source sends the image when they lack its)."""
    if podman.installed() and podman.inspect(name) is not None:
        raise BadRequest(f"Podman on this node already has a container named {name!r}")
    return {"podman_images": image_ids(podman)}


def image_ids(podman: Podman) -> list[str]:
    """Every image ID this node's Podman holds (none where Podman is not installed)."""
    if not podman.installed():
        return []
    out = podman.call("images", "--quiet", "--no-trunc", timeout=60)
    return sorted({ln.strip().removeprefix("sha256:") for ln in out.stdout.split() if ln.strip()})
