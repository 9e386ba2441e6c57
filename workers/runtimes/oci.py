"""The ``oci`` runtime: OCI containers run by runc, checkpointed through runc's CRIU.

A container is an OCI bundle (workers.runtimes.ocibundle) under the cluster's
container root, its rootfs a directory given at start (label ``oci.rootfs``,
limit ``oci.memory`` in bytes). Each node keeps its own runc state
(``<state>/runc``) and an inventory like the criu runtime's. runc's checkpoint
without ``--leave-running`` ends the container, so a frozen source is one whose
images are the only copy: rollback restores it from them on the source.
Post-copy is runc's lazy dump and CRIU's lazy-pages daemon (workers.runtimes.ocilazy);
a cold dump may stream its pages (workers.runtimes.ocipages). A restore runs from
the node's copy of config.json, its cgroup under the node's (ocibundle.here).

A Podman container joins the inventory by ``adopt`` (engine ``podman``) and
leaves it by ``release``; it moves through Podman's own checkpoint and restore
(workers.runtimes.ocipodman says why), so Podman stays in charge of it. A runc
container started outside ferry is adopted by its ID (workers.runtimes.ociadopt)
and moves as ferry's own do, under the runc root it was started with.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from tasks.core.admission import PODMAN_NOT_LAZY, PODMAN_PAGES
from workers import procs
from workers.criu.adapter import Criu
from workers.criu.lazydump import wait_served
from workers.criu.log import PipedLog, explain, lazy_report
from workers.criu.stats import RESTORE_FIELDS, dump_stats, read_stats
from workers.errors import BadRequest, CapabilityError, CriuError, PermanentError
from workers.ids import check_container_name
from workers.records import (
    Capabilities,
    ContainerInfo,
    DumpStats,
    LazyReport,
    PagesTarget,
    RestoreStats,
)
from workers.runtimes import ociadopt, ocilazy, ocipages, ocipodman
from workers.runtimes.base import LazySource, Served
from workers.runtimes.criu import NOT_ROOT, PAGE_SIZE
from workers.runtimes.inventory import Inventory
from workers.runtimes.ocibundle import OciEntry, check_start, config, here, write_bundle
from workers.runtimes.podmancli import Podman


class OciRuntime:
    """Runs OCI containers with runc on this node and moves them with runc's CRIU."""

    name = "oci"

    def __init__(
        self,
        state_dir: Path,
        container_root: Path,
        runc: str = "runc",
        criu: Criu | None = None,
        podman: Podman | None = None,
        allow_pipe_max_size: bool = False,
        runc_root: Path = Path("/run/runc"),
        cgroup_parent: str = "/ferry",
    ) -> None:
        self.state_dir = state_dir
        self.inventory = Inventory(state_dir / "oci", OciEntry, ("argv",))
        self.root = state_dir / "runc"
        self.container_root = container_root
        self.runc = runc
        self.runc_root = runc_root  # where the runc containers ``adopt runc:ID`` names live
        self.cgroup_parent = cgroup_parent  # this node's containers' cgroups are below it
        self.criu = criu or Criu()
        self.podman = podman or Podman()
        self._caps: Capabilities | None = None
        self.allow_pipe_max_size = allow_pipe_max_size  # as the criu runtime's probe_lazy
        self.container_root.mkdir(parents=True, exist_ok=True)

    def capabilities(self) -> Capabilities:
        """The criu probe with its real lazy round trip, run once (workers.runtimes.ocilazy)."""
        if self._caps is None:
            self._caps = ocilazy.capabilities(
                self.state_dir, self.criu, self.runc, self.allow_pipe_max_size
            )
        return self._caps

    def page_server(self, images: Path, sock: int) -> PipedLog:
        return self.criu.page_server(images, sock)

    def lazy_report(self, images: Path) -> LazyReport:
        return lazy_report(images, PAGE_SIZE)

    # -- inventory ---------------------------------------------------------
    def _cmd(self, e: OciEntry) -> list[str]:
        """runc with the root that holds ``e``: ferry's own, or the one it was adopted from."""
        return [self.runc, "--root", e.root or str(self.root)]

    def _runc(
        self, e: OciEntry, *args: str, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self._cmd(e), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            check=False,
        )

    def _state(self, e: OciEntry) -> tuple[str, int]:
        """runc's status of ``e`` (``gone`` when runc has none) and its init's pid."""
        out = self._runc(e, "state", e.name)
        if out.returncode != 0:
            return "gone", 0
        st = json.loads(out.stdout)
        return str(st["status"]), int(st.get("pid") or 0)

    def _status(self, e: OciEntry) -> tuple[str, int]:
        """What the engine says of ``e``: runc's or Podman's status, and its pid."""
        if e.engine == "podman":
            return ocipodman.state_of(self.podman, e.name)
        return self._state(e)

    def _info(self, e: OciEntry) -> ContainerInfo:
        status, pid = self._status(e)
        state = {"running": "running", "paused": "frozen"}.get(status, "exited")
        if e.state == "frozen":  # gone after a dump, or seized by a lazy one (runc: running)
            state = "frozen"
        return ContainerInfo(
            name=e.name,
            pid=pid,
            argv=e.argv,
            state=state,
            memory_bytes=procs.rss_bytes(pid) if state == "running" else 0,
            started=e.started,
            log=e.log,
            runtime=self.name,
            labels=e.labels,
        )

    def containers(self) -> list[ContainerInfo]:
        return [self._info(e) for e in self.inventory.entries()]

    def get(self, name: str) -> ContainerInfo:
        return self._info(self.inventory.load(name))

    # -- lifecycle ---------------------------------------------------------
    def start(
        self,
        name: str,
        argv: list[str],
        labels: dict[str, str] | None = None,
        sync: tuple[str, ...] = (),
        net: str = "",
    ) -> ContainerInfo:
        """Start ``argv`` in an OCI container ``name`` whose rootfs is ``labels['oci.rootfs']``."""
        check_container_name(name)
        labels = dict(labels or {})
        rootfs, memory = check_start(argv, labels, sync, net)
        if os.geteuid() != 0:
            raise CapabilityError(NOT_ROOT)
        if self.inventory.has(name) and self.get(name).state != "exited":
            raise BadRequest(f"container {name!r} already runs on this node")
        workdir = self.container_root / name
        write_bundle(workdir / "bundle", config(name, rootfs, argv, memory, self.cgroup_parent))
        if memory is not None:
            labels["oci.memory"] = str(memory)
        entry = OciEntry(
            name, tuple(argv), str(workdir / "bundle"), str(workdir / "log"), time.time(), labels
        )
        self._forget(entry)
        self._detached(entry, "run", "--bundle", entry.bundle, "--detach", name)
        self.inventory.save(entry)
        return self._info(entry)

    def _detached(self, entry: OciEntry, *args: str) -> None:
        """``runc ARGS`` with the container's stdio on pipes copied into its log."""
        # -S: the keeper needs only the standard library, and a restore is inside the
        # freeze: skipping site (the venv's .pth files) saves 50-100 ms of it here
        proc = subprocess.run(
            [sys.executable, "-S", "-m", "workers.runtimes.ocistdio", "--log", entry.log, "--"]
            + [*self._cmd(entry), *args],
            capture_output=True,
            text=True,
            timeout=120,
            stdin=subprocess.DEVNULL,
            cwd=str(Path(__file__).resolve().parents[2]),
            check=False,
        )
        if proc.returncode != 0 or proc.stdout.strip() != "ok":
            raise PermanentError(f"runc {args[0]} {entry.name}: {proc.stderr.strip()[-400:]}")

    def _forget(self, e: OciEntry) -> None:
        """Drop runc's record of a stopped ``e`` (a live one is refused by runc); a
        name runc has no state dir for costs no runc call (restore is in the freeze)."""
        if (Path(e.root or self.root) / e.name).exists():
            self._runc(e, "delete", e.name)

    def _live(self, name: str) -> OciEntry:
        entry = self.inventory.load(name)
        if self._status(entry)[0] != "running":
            raise PermanentError(f"container {name!r} is not running on this node")
        return entry

    def checkpoint(
        self,
        name: str,
        images: Path,
        *,
        leave_running: bool = False,
        parent: Path | None = None,
        pages: PagesTarget | None = None,
    ) -> DumpStats:
        """``runc checkpoint`` of ``name`` into ``images``; without ``leave_running`` the
        container ends and its images are its only copy. A failed dump leaves it running."""
        entry = self._live(name)
        if entry.engine == "podman":
            if pages is not None:
                raise CapabilityError(f"streamed pages of {name} refused: {PODMAN_PAGES}")
            stats = ocipodman.checkpoint(self.podman, name, images, leave_running)
        elif pages is not None:  # paused, not ended: the pages leave no images here
            dump = functools.partial(self._dump, entry, images)
            stats = ocipages.checkpoint(self._cmd(entry), name, images, pages, dump)
        else:
            args = ["--image-path", str(images), "--work-path", str(images)]
            if leave_running:
                args.append("--leave-running")
            if parent is not None and self.capabilities().soft_dirty:
                args += ["--parent-path", os.path.relpath(parent, images)]
            stats = self._dump(entry, images, args)
        if not leave_running:
            self.inventory.save(replace(entry, state="frozen"))
        (images / "ferry-container.json").write_text(json.dumps(asdict(entry)))
        return stats

    def _dump(self, e: OciEntry, images: Path, args: list[str]) -> DumpStats:
        images.mkdir(parents=True, exist_ok=True)
        began = time.monotonic()
        out = self._runc(e, "checkpoint", *args, e.name, timeout=300)
        if out.returncode != 0:
            log = images / "dump.log"
            errno, detail = explain(log) if log.exists() else (0, out.stderr.strip()[-300:])
            raise CriuError("dump", errno, log, detail)
        return dump_stats(images, (time.monotonic() - began) * 1000)

    def predump(self, name: str, images: Path, parent: Path | None) -> DumpStats:
        """``runc checkpoint --pre-dump``, where the kernel tracks dirty pages."""
        if not self.capabilities().soft_dirty:
            raise CapabilityError(
                "pre-dump refused: tracking memory is not available (no soft-dirty here)"
            )
        if (entry := self._live(name)).engine == "podman":
            raise CapabilityError("pre-dump of a Podman container: use delta (podman has no chain)")
        args = ["--pre-dump", "--image-path", str(images), "--work-path", str(images)]
        if parent is not None:
            args += ["--parent-path", os.path.relpath(parent, images)]
        return self._dump(entry, images, args)

    def checkpoint_lazy(
        self, name: str, images: Path, address: str, port: int, parent: Path | None = None
    ) -> float:
        """runc's lazy dump of ``name``: frozen, dumped but for its pages, which its
        page server on ``port`` hands out until the destination has them all (then
        runc ends it here). Returns when it froze (wall clock)."""
        entry = self._live(name)
        if entry.engine == "podman":
            raise CapabilityError(f"post-copy of {name} refused: {PODMAN_NOT_LAZY}")
        ocilazy.check_bundle(name, Path(entry.bundle))
        images.mkdir(parents=True, exist_ok=True)
        (images / "ferry-container.json").write_text(json.dumps(asdict(entry)))
        parent = parent if self.capabilities().soft_dirty else None
        frozen_at = ocilazy.start_dump(self._cmd(entry), name, images, address, port, parent)
        self.inventory.save(replace(entry, state="frozen"))
        return frozen_at

    def wait_lazy(
        self, name: str, images: Path, timeout_s: float, served: Served | None = None
    ) -> DumpStats:
        """Wait until a post-copy dump has served every page; its stats."""

        def resumed() -> None:  # CRIU thawed it: runc's container runs on here
            self.inventory.save(replace(self.inventory.load(name), state="running"))

        return wait_served(images, timeout_s, served, resumed)

    def restore(
        self, name: str, images: Path, page_server: LazySource | None = None
    ) -> RestoreStats:
        """``runc restore --detach`` of ``name`` from ``images`` under the same name; with
        ``page_server`` (post-copy) its pages come from there as it touches them."""
        check_container_name(name)
        if self.inventory.has(name) and self.get(name).state in ("running", "frozen"):
            raise BadRequest(f"container {name!r} already runs on this node")
        meta = json.loads((images / "ferry-container.json").read_text())
        if meta.get("name") != name:
            raise PermanentError(f"images in {images} are of {meta.get('name')!r}, not {name!r}")
        entry = replace(self.inventory.from_dict(meta), state="running")
        if entry.engine == "podman":
            if page_server is not None:
                raise CapabilityError(f"post-copy of {name} refused: {PODMAN_NOT_LAZY}")
            done = ocipodman.restore(self.podman, name, entry, images)
            self.inventory.save(entry)
            return done
        if not (Path(entry.bundle) / "config.json").exists():
            raise PermanentError(f"bundle {entry.bundle} of {name!r} is missing on this node")
        self._forget(entry)
        # the lazy-pages daemon's socket and log are in images: the restore works there too
        work = images if page_server else images / f"restore-{time.time_ns()}"
        began = time.monotonic()
        bundle = here(Path(entry.bundle), self.state_dir / "bundles" / name, self.cgroup_parent)
        where = ["--image-path", str(images), "--work-path", str(work), "--bundle", str(bundle)]
        if page_server is not None:
            self.criu.start_lazy_pages(images, page_server())
            where.append("--lazy-pages")
        where += ["--pid-file", str(work / "pid")]  # its pid without another runc call
        try:
            self._detached(entry, "restore", "--detach", *where, name)
        except PermanentError as exc:
            log = work / "restore.log"
            errno, detail = explain(log) if log.exists() else (0, str(exc))
            raise CriuError("restore", errno, log, detail) from exc
        wall = (time.monotonic() - began) * 1000
        self.inventory.save(entry)
        stats = work / "stats-restore"
        fields = read_stats(stats, 2, RESTORE_FIELDS) if stats.exists() else {}
        return RestoreStats(
            pid=int((work / "pid").read_text()),
            restore_ms=fields.get("restore_time", 0) / 1000,
            forking_ms=fields.get("forking_time", 0) / 1000,
            pages_restored=fields.get("pages_restored", 0),
            wall_ms=wall,
        )

    def resume(self, name: str, images: Path | None = None) -> ContainerInfo:
        """Bring a checkpointed source back: running already, or restored from ``images``."""
        entry = self.inventory.load(name)
        if self._status(entry)[0] == "paused":  # a streamed dump's source copy
            ocipages.call(self._cmd(entry), "resume", name)
        if self._status(entry)[0] == "running":
            self.inventory.save(replace(entry, state="running"))
            return self.get(name)
        if entry.engine == "podman":  # its checkpoint was kept by its Podman
            self.podman.restore_here(name)
            self.inventory.save(replace(entry, state="running"))
            return self.get(name)
        if images is None or not (images / "ferry-container.json").exists():
            raise PermanentError(f"container {name!r} is gone and no images are left to restore it")
        self.inventory.drop(name)
        try:
            self.restore(name, images)
        except CriuError:
            self.inventory.save(entry)
            raise
        return self.get(name)

    def kill(self, name: str) -> None:
        """Kill ``name`` and forget it; a container that is gone is just forgotten."""
        if (entry := self.inventory.load(name)).engine == "podman":
            self.podman.remove(name)
        elif self._state(entry)[0] != "gone":
            out = self._runc(entry, "delete", "--force", name)
            if out.returncode != 0 and self._state(entry)[0] != "gone":
                raise PermanentError(f"runc would not delete {name!r}: {out.stderr.strip()}")
        self.inventory.drop(name)

    # -- adopted containers ------------------------------------------------
    def adopt(self, ref: str) -> ContainerInfo:
        """Take ``podman:NAME`` or ``runc:ID`` (under ``runc_root``) into the inventory, if
        it can be checkpointed (BadRequest why not)."""
        name = check_container_name(ref.partition(":")[2])
        if self.inventory.has(name) and self.get(name).state != "exited":
            raise BadRequest(f"container {name!r} is already in this node's inventory")
        entry = ociadopt.entry(ref, self.podman, self.runc, self.runc_root, self.container_root)
        self.inventory.save(entry)
        return self._info(entry)

    def release(self, name: str) -> ContainerInfo:
        """Hand an adopted container back to its engine: ferry forgets it, it runs on."""
        entry = self.inventory.load(name)
        if not entry.adopted:
            raise BadRequest(f"{name!r} was started by ferry, not adopted: `ferry stop` ends it")
        if (info := self._info(entry)).state == "frozen":
            raise BadRequest(f"{name!r} is checkpointed (a migration holds it): release it later")
        self.inventory.drop(name)
        return info

    def admit(self, name: str) -> dict[str, Any]:
        return ocipodman.admit(self.podman, name)

    def carry(self, name: str, into: Path, peer: dict[str, Any]) -> int:
        """Put beside ``name``'s checkpoint what the destination lacks: its image."""
        entry = self.inventory.load(name)
        have = list(peer.get("podman_images", []))
        return ocipodman.carry_image(self.podman, entry.image, into, have) if entry.image else 0
