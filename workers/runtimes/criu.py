"""The ``criu`` runtime: ferry's own containers, checkpointed with real CRIU.

A container is a process tree in new pid, uts and ipc namespaces (started by
workers.runtimes.launch), with its working directory and log under the cluster's
container root (storage every node sees, or synced); one started with an address
has its own network namespace too (workers.runtimes.netns), which moves with it
with its TCP connections. The node's inventory
(workers.runtimes.inventory) is the authority on what it manages.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from tasks.core.netaddr import parse
from workers import procs
from workers.criu.adapter import Criu
from workers.criu.lazydump import PORT_FILE, wait_served
from workers.criu.log import PipedLog, lazy_report
from workers.criu.probe import capabilities
from workers.dataplane.pagestream import Relay
from workers.dirsync.dirs import check_dirs, check_unshared
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
from workers.runtimes import netlock
from workers.runtimes.base import LazySource, Served
from workers.runtimes.inventory import Inventory
from workers.runtimes.netns import NetIdentity, claim, restore_into

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")  # what CRIU counts pages in, on this node

# Namespaces and CRIU need root: said once, before anything is tried.
NOT_ROOT = (
    "containers need root on this node (CRIU and namespaces): run `ferry worker` as root, "
    "or FERRY_RUNTIME=sim for the simulated runtime"
)


@dataclass(frozen=True)
class Entry:
    """One inventory entry, as kept on the node's disk."""

    name: str
    pid: int
    ticks: int
    argv: tuple[str, ...]
    workdir: str
    log: str
    started: float
    state: str = "running"  # running | frozen
    labels: dict[str, str] = field(default_factory=dict)
    sync: tuple[str, ...] = ()  # declared node-local directories (workers.dirsync.dirs)
    net: str = ""  # its own address, ADDR/PREFIX (workers.runtimes.netns); "": the node's network


class CriuRuntime:
    """Runs, checkpoints and restores containers on this node with CRIU."""

    name = "criu"

    def __init__(
        self,
        state_dir: Path,
        container_root: Path,
        criu: Criu | None = None,
        sync_roots: tuple[Path, ...] = (),
        allow_pipe_max_size: bool = False,
        bridge: str = "",
    ) -> None:
        self.state_dir = state_dir
        self.inventory = Inventory(state_dir / "containers", Entry, ("argv", "sync"))
        self.container_root = container_root
        self.sync_roots = sync_roots
        self.criu = criu or Criu()
        self.allow_pipe_max_size = allow_pipe_max_size  # may raise fs.pipe-max-size (probe_lazy)
        self.bridge = bridge  # where containers with their own address plug in ("": none)
        self._caps: Capabilities | None = None
        self.container_root.mkdir(parents=True, exist_ok=True)

    # -- what this node can do ---------------------------------------------
    def capabilities(self) -> Capabilities:
        """The probe (CRIU, its kernel features, a real lazy round trip), run once."""
        if self._caps is None:
            self._caps = capabilities(self.state_dir, self.criu, self.allow_pipe_max_size)
        return self._caps

    def page_server(self, images: Path, sock: int) -> PipedLog:
        return self.criu.page_server(images, sock)

    def lazy_report(self, images: Path) -> LazyReport:
        return lazy_report(images, PAGE_SIZE)

    # -- inventory ---------------------------------------------------------
    def _info(self, e: Entry) -> ContainerInfo:
        live = procs.alive(e.pid, e.ticks)
        st = e.state if live else "exited"
        if live and e.state == "running" and procs.state(e.pid) == "T":
            st = "frozen"
        return ContainerInfo(
            name=e.name,
            pid=e.pid,
            argv=e.argv,
            state=st,
            memory_bytes=procs.rss_bytes(e.pid) if live else 0,
            started=e.started,
            log=e.log,
            runtime=self.name,
            labels=e.labels,
            sync=e.sync,
            net=e.net,
        )

    def containers(self) -> list[ContainerInfo]:
        return [self._info(e) for e in self.inventory.entries()]

    def get(self, name: str) -> ContainerInfo:
        return self._info(self.inventory.load(name))

    def has(self, name: str) -> bool:
        return self.inventory.has(name)

    # -- lifecycle ---------------------------------------------------------
    def start(
        self,
        name: str,
        argv: list[str],
        labels: dict[str, str] | None = None,
        sync: tuple[str, ...] = (),
        net: str = "",
    ) -> ContainerInfo:
        """Start ``argv`` as container ``name`` on this node, declaring its ``sync`` dirs,
        with its own address ``net`` (ADDR/PREFIX) on the node's bridge if given."""
        check_container_name(name)
        if not argv or not all(isinstance(a, str) and "\0" not in a for a in argv):
            raise BadRequest("a container needs a command: ferry run --node N -- CMD ...")
        if os.geteuid() != 0:
            raise CapabilityError(NOT_ROOT)
        if self.has(name) and self.get(name).state != "exited":
            raise BadRequest(f"container {name!r} already runs on this node")
        workdir = self.container_root / name
        sync = self._check_sync(name, sync, workdir)
        held = {c.name: c.net for c in self.containers() if c.state != "exited"}
        identity = claim(self.state_dir, self.bridge, name, net, held) if net else None
        workdir.mkdir(parents=True, exist_ok=True)
        log = workdir / "log"
        joins = ["--netns", str(identity.path)] if identity else []
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "workers.runtimes.launch",
                "--name",
                name,
                "--dir",
                str(workdir),
                "--log",
                str(log),
                *joins,
                "--",
                *argv,
            ],
            capture_output=True,
            text=True,
            timeout=30,
            stdin=subprocess.DEVNULL,
            cwd=str(Path(__file__).resolve().parents[2]),
        )
        if proc.returncode != 0 or not proc.stdout.strip().isdigit():
            if identity:
                identity.remove()
            raise BadRequest(
                f"cannot start {argv[0]!r}: {proc.stderr.strip() or proc.stdout.strip()}"
            )
        pid = int(proc.stdout.strip())
        ticks = procs.start_ticks(pid) or 0
        entry = Entry(
            name=name,
            pid=pid,
            ticks=ticks,
            argv=tuple(argv),
            workdir=str(workdir),
            log=str(log),
            started=time.time(),
            labels=dict(labels or {}),
            sync=sync,
            net=net,
        )
        self.inventory.save(entry)
        if identity:
            identity.announce()
        return self._info(entry)

    def _identity(self, name: str, net: str) -> NetIdentity | None:
        """Container ``name``'s network on this node, if it has an address."""
        return NetIdentity(self.state_dir, name, parse(net), self.bridge) if net else None

    def _live(self, name: str) -> Entry:
        entry = self.inventory.load(name)
        if not procs.alive(entry.pid, entry.ticks):
            raise PermanentError(
                f"container {name!r} is not running on this node (pid {entry.pid} is gone)"
            )
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
        """Dump ``name`` into ``images``; the tree stays frozen unless ``leave_running``.

        With ``pages`` the pages stream to the destination's page server
        (:mod:`workers.dataplane.pagestream`) instead. A failed dump leaves the container
        running (CRIU resumes it).
        """
        entry = self._live(name)
        identity = self._identity(name, entry.net)
        net_ns = identity.inode() if identity else None
        relay = Relay(pages) if pages is not None else None
        with relay if relay is not None else contextlib.nullcontext(None) as fd:
            stats = self.criu.dump(
                entry.pid,
                images,
                leave_running=leave_running,
                leave_stopped=not leave_running,
                parent=parent,
                ps_socket=fd,
                net_ns=net_ns,
            )
        if relay is not None:
            stats = replace(stats, pages=relay.stats)
        if not leave_running:
            self.inventory.save(replace(entry, state="frozen"))
            if identity:
                identity.withdraw(images)  # off the network before the destination's copy is on
        (images / "ferry-container.json").write_text(json.dumps(asdict(entry)))
        return stats

    def predump(self, name: str, images: Path, parent: Path | None) -> DumpStats:
        """A soft-dirty pre-dump pass (``criu pre-dump --track-mem``); the tree runs on."""
        entry = self._live(name)
        return self.criu.dump(entry.pid, images, pre=True, track_mem=True, parent=parent)

    def checkpoint_lazy(
        self, name: str, images: Path, address: str, port: int, parent: Path | None = None
    ) -> float:
        """Dump ``name`` for post-copy: all but its pages, which CRIU's page server
        on ``address:port`` hands out until the destination has them all. The
        tree stays frozen (and is resumed by CRIU if the page transfer fails).
        Returns when the tree froze (wall clock).

        A container with its own address is dumped with its connections, as
        :meth:`checkpoint` does, and held for :meth:`resume`
        (:mod:`workers.runtimes.netlock`); its address is off the network when this returns.
        """
        entry = self._live(name)
        identity = self._identity(name, entry.net)
        (images / "ferry-container.json").parent.mkdir(parents=True, exist_ok=True)
        (images / "ferry-container.json").write_text(json.dumps(asdict(entry)))
        net_ns = identity.inode() if identity else None
        _, frozen_at = self.criu.start_lazy_dump(entry.pid, images, address, port, parent, net_ns)
        (images / PORT_FILE).write_text(f"{port}\n")  # wait_lazy counts its bytes
        self.inventory.save(replace(entry, state="frozen"))
        if identity:
            netlock.hold(entry.pid)
            identity.withdraw(images)  # off the network before the destination's copy is on
        return frozen_at

    def wait_lazy(
        self, name: str, images: Path, timeout_s: float, served: Served | None = None
    ) -> DumpStats:
        """Wait until a post-copy dump has served every page; its stats. ``served``
        hears, every quarter second, how many bytes the page server has sent."""

        def resumed() -> None:  # CRIU resumed it; one with its own address is held (netlock)
            entry = self.inventory.load(name)
            if not entry.net:
                self.inventory.save(replace(entry, state="running"))

        return wait_served(images, timeout_s, served, resumed)

    def restore(
        self, name: str, images: Path, page_server: LazySource | None = None
    ) -> RestoreStats:
        """Restore ``name`` from ``images`` on this node and take it into the inventory.

        With ``page_server`` (post-copy) the tree starts at once and its pages
        come from the source's page server as it touches them.
        """
        check_container_name(name)
        if self.has(name) and self.get(name).state in ("running", "frozen"):
            raise BadRequest(f"container {name!r} already runs on this node")
        meta = json.loads((images / "ferry-container.json").read_text())
        if meta.get("name") != name:
            raise PermanentError(f"images in {images} are of {meta.get('name')!r}, not {name!r}")
        identity = self._identity(name, meta.get("net", ""))
        lazy: tuple[str, ...] = ()
        if page_server is not None:
            self.criu.start_lazy_pages(images, page_server())
            lazy = ("--lazy-pages",)
        if identity:
            stats = restore_into(self.criu, images, identity, lazy)
        else:
            stats = self.criu.restore(images, extra=lazy)
        entry = Entry(
            name=name,
            pid=stats.pid,
            ticks=procs.start_ticks(stats.pid) or 0,
            argv=tuple(meta["argv"]),
            workdir=meta["workdir"],
            log=meta["log"],
            started=meta["started"],
            labels=meta.get("labels", {}),
            sync=tuple(meta.get("sync", ())),
            net=meta.get("net", ""),
        )  # the declaration and the address move with it
        self.inventory.save(entry)
        return stats

    def _check_sync(self, name: str, sync: tuple[str, ...], workdir: Path) -> tuple[str, ...]:
        """``sync`` if this node may sync every dir and no other container declared one of them."""
        check_dirs(sync, self.sync_roots, workdir, exist=True)
        live = {c.name: c.sync for c in self.containers() if c.state != "exited"}
        check_unshared(name, sync, live)
        return tuple(sync)

    def resume(self, name: str, images: Path | None = None) -> ContainerInfo:
        """Bring a frozen or lost source copy back to running.

        Frozen (after a dump): continue it. Gone but its images are here:
        restore it on this node. Running: nothing to do.
        """
        entry = self.inventory.load(name)
        has_images = images is not None and (images / "ferry-container.json").exists()
        identity = self._identity(name, entry.net)
        if identity and entry.state == "frozen" and procs.alive(entry.pid, entry.ticks):
            # its connections are in repair mode behind CRIU's lock: a SIGCONT alone would
            # not bring them back
            if has_images:  # a restore from the images here does
                procs.kill_and_wait(entry.pid)
            else:  # a post-copy dump, ended, its tree held stopped (netlock.hold)
                netlock.release(procs.tree(entry.pid), identity.path)
                identity.announce()
        if procs.alive(entry.pid, entry.ticks):
            procs.signal_tree(entry.pid, signal.SIGCONT)
            entry = replace(entry, state="running")
            self.inventory.save(entry)
            return self._info(entry)
        if images is None or not has_images:
            raise PermanentError(f"container {name!r} is gone and no images are left to restore it")
        self.inventory.drop(name)
        try:
            self.restore(name, images)
        except CriuError:
            self.inventory.save(entry)
            raise
        return self.get(name)

    def kill(self, name: str) -> None:
        """Kill ``name`` and forget it. Killing a container that is gone just forgets it."""
        entry = self.inventory.load(name)
        if procs.alive(entry.pid, entry.ticks) and not procs.kill_and_wait(entry.pid):
            raise PermanentError(f"container {name!r} (pid {entry.pid}) would not die")
        identity = self._identity(name, entry.net)
        if identity:
            identity.remove()
        self.inventory.drop(name)

    def admit(self, name: str) -> dict[str, Any]:
        return {}  # a container of this runtime needs nothing of its destination but the name

    def carry(self, name: str, into: Path, peer: dict[str, Any]) -> int:
        return 0
