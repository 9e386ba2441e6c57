"""The ``sim`` runtime: a model of containers, honest about being one.

A simulated container is a counter that advances every 0.1 s while it runs,
with a memory of ``sim.memory`` bytes that it dirties as workers.runtimes.simmodel
says (``sim.dirty_rate`` bytes/s, mostly in a hot set of ``sim.hot_set``
bytes). Its memory is a sparse file beside its inventory record: each
snapshot stamps the pages dirtied since the last one, so a full image set
carries the whole memory (zeros where never written) with a CRIU-shaped
pagemap, and ``delta`` finds the changed blocks as it does in CRIU's images;
a pre-dump or a dump with a parent writes only the dirtied pages. Checkpoint
and restore sleep for the model's freeze and restore times. It stands in for
CRIU only where a test, demo or benchmark says "simulated": never in a test
that claims a real migration. The model's numbers and where they come from:
docs/sim.md.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

from workers.criu.log import PipedLog
from workers.errors import BadRequest, CapabilityError, PermanentError, UnknownContainer
from workers.ids import check_container_name
from workers.records import (
    Capabilities,
    ContainerInfo,
    DumpStats,
    LazyReport,
    PagesTarget,
    RestoreStats,
)
from workers.runtimes.base import LazySource, Served
from workers.runtimes.simmodel import (
    MIB,
    PAGE,
    SimModel,
    Workload,
    dirtied,
    dump_ms,
    pages,
    restore_ms,
    windows,
    workload,
)

TICK_S = 0.1
PAGE_SIZES = (4096, 16384, 65536)  # arm64's; x86 has only the first
# What workers.dataplane.delta reads of a pagemap: two magics, a size, then field 1 = pages_id 1.
PAGEMAP = bytes(12) + b"\x08\x01"
_CHUNK = 16 * MIB


def copy_sparse(src: Path, dst: Path) -> None:
    """Copy ``src`` to ``dst`` leaving its holes holes (a sim memory is mostly zeros)."""
    with open(src, "rb") as f, open(dst, "wb") as w:
        size = os.fstat(f.fileno()).st_size
        w.truncate(size)
        off = 0
        while off < size:
            try:
                off = os.lseek(f.fileno(), off, os.SEEK_DATA)
            except OSError:  # ENXIO: only a hole is left
                break
            end = os.lseek(f.fileno(), off, os.SEEK_HOLE)
            while off < end:
                n = os.copy_file_range(f.fileno(), w.fileno(), min(end - off, _CHUNK), off, off)
                if n <= 0:
                    raise OSError(f"short copy of {src} at {off}")
                off += n


class SimRuntime:
    """Simulated containers, kept in a JSON inventory like the criu runtime's."""

    name = "sim"

    def __init__(
        self,
        state_dir: Path,
        container_root: Path,
        model: SimModel | None = None,
        page_size: int = PAGE,
    ) -> None:
        self.inventory = state_dir / "sim-containers"
        self.container_root = container_root
        self.model = model or SimModel()
        if page_size not in PAGE_SIZES:
            raise BadRequest(f"sim page size must be one of {PAGE_SIZES}, not {page_size}")
        self.page_size = page_size  # the kernel's it models: 16384 for a Pi 5's default kernel
        self.inventory.mkdir(parents=True, exist_ok=True)

    def capabilities(self) -> Capabilities:
        """Everything but a page server: the model checkpoints, tracks and restores lazily."""
        return Capabilities(
            arch=os.uname().machine,
            criu_ok=True,
            soft_dirty=True,
            lazy_pages=True,
            simulated=True,
            bits=64,
            page_size=self.page_size,
            kernel=os.uname().release,
        )

    def page_server(self, images: Path, sock: int) -> PipedLog:
        raise CapabilityError("the sim runtime runs no CRIU: its pages travel as files")

    def lazy_report(self, images: Path) -> LazyReport:
        return LazyReport(None)  # the model sends its lazy pages as part of the restore's time

    def _path(self, name: str) -> Path:
        return self.inventory / f"{check_container_name(name)}.json"

    def _load(self, name: str) -> dict[str, object]:
        try:
            rec: dict[str, object] = json.loads(self._path(name).read_text())
            return rec
        except FileNotFoundError:
            raise UnknownContainer(name) from None

    def _save(self, rec: dict[str, object]) -> None:
        path = self._path(str(rec["name"]))
        tmp = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")  # one per writer
        tmp.write_text(json.dumps(rec))
        os.replace(tmp, path)

    @staticmethod
    def counter(rec: dict[str, object], now: float) -> int:
        base = int(str(rec["counter"]))
        if rec["state"] != "running":
            return base
        return base + int((now - float(str(rec["since"]))) / TICK_S)

    def _info(self, rec: dict[str, object]) -> ContainerInfo:
        self._write_log(rec)
        return ContainerInfo(
            name=str(rec["name"]),
            pid=0,
            argv=tuple(rec["argv"]),  # type: ignore[arg-type]
            state=str(rec["state"]),
            memory_bytes=int(rec["memory"]),  # type: ignore[call-overload]
            started=float(rec["started"]),  # type: ignore[arg-type]
            log=str(rec["log"]),
            runtime=self.name,
            labels=dict(rec["labels"]),  # type: ignore[call-overload]
        )

    def _write_log(self, rec: dict[str, object], at: float | None = None) -> None:
        """Bring the container's log up to its counter, as the real counter would."""
        if rec["state"] != "running":
            return
        now = self.counter(rec, time.time() if at is None else at)
        logged = int(rec.get("logged", -1))  # type: ignore[call-overload]
        if now > logged:
            base, since = int(rec["counter"]), float(rec["since"])  # type: ignore[call-overload, arg-type]
            with open(str(rec["log"]), "a") as f:
                f.writelines(
                    f"tick {i} {since + (i - base) * TICK_S:.3f}\n"
                    for i in range(logged + 1, now + 1)
                )
            rec["logged"] = now
            self._save(rec)

    def containers(self) -> list[ContainerInfo]:
        out = []
        for p in sorted(self.inventory.glob("*.json")):
            try:
                out.append(self._info(self._load(p.stem)))
            except UnknownContainer:
                continue  # killed since the glob
        return out

    def get(self, name: str) -> ContainerInfo:
        return self._info(self._load(name))

    def _mem(self, name: str) -> Path:
        return self.inventory / f"{check_container_name(name)}.mem"

    def _fresh_memory(self, name: str, memory: int) -> None:
        """A new memory for ``name``, never written: all holes; its mtime is its last snapshot."""
        with open(self._mem(name), "wb") as f:
            f.truncate(pages(memory) * PAGE)

    def _workload(self, rec: dict[str, object]) -> Workload:
        return workload(self.model, {**rec["labels"], "sim.memory": str(rec["memory"])})  # type: ignore[dict-item]

    def _snapshot(self, rec: dict[str, object], now: float) -> int:
        """Stamp the pages dirtied since the last snapshot; how many there were.

        The last snapshot's time is the memory file's mtime (no record write
        that another process could overwrite); frozen time dirties nothing.
        """
        mem = self._mem(str(rec["name"]))
        wl = self._workload(rec)
        if not mem.exists():  # a container of a sim without memories: it starts one now
            self._fresh_memory(str(rec["name"]), wl.memory)
        ran = 0.0
        if rec["state"] == "running":
            ran = now - max(mem.stat().st_mtime, float(rec["since"]))  # type: ignore[arg-type]
        hot_cold = dirtied(wl, ran, self.model.hot_writes)
        turn = int(now * 10)
        stamp = turn.to_bytes(8, "little") * (PAGE // 8)
        with open(mem, "r+b") as f:
            for a, b in windows(wl, hot_cold, turn):
                for lo in range(a, b, _CHUNK // PAGE):
                    hi = min(b, lo + _CHUNK // PAGE)
                    os.pwrite(f.fileno(), stamp * (hi - lo), lo * PAGE)
        os.utime(mem, (now, now))
        return sum(hot_cold)

    def start(
        self,
        name: str,
        argv: list[str],
        labels: dict[str, str] | None = None,
        sync: tuple[str, ...] = (),
        net: str = "",
    ) -> ContainerInfo:
        check_container_name(name)
        if net:
            raise BadRequest("--net needs a criu node; this one runs sim")
        if sync:
            raise BadRequest(
                "the sim runtime syncs no directories: run the container on criu nodes"
            )
        if self._path(name).exists():
            raise BadRequest(f"container {name!r} already runs on this node")
        labels = dict(labels or {})
        memory = workload(self.model, labels).memory  # every sim.* label checked here
        workdir = self.container_root / name
        workdir.mkdir(parents=True, exist_ok=True)
        now = time.time()
        rec: dict[str, object] = {
            "name": name,
            "argv": list(argv),
            "labels": labels,
            "memory": memory,
            "counter": 0,
            "since": now,
            "state": "running",
            "started": now,
            "log": str(workdir / "log"),
            "logged": -1,
        }
        self._fresh_memory(name, memory)
        self._save(rec)
        return self._info(rec)

    def _live(self, name: str) -> dict[str, object]:
        rec = self._load(name)
        if rec["state"] == "exited":
            raise PermanentError(f"container {name!r} is not running")
        return rec

    def _dump(
        self, rec: dict[str, object], images: Path, now: float, whole: bool, lazy: bool = False
    ) -> DumpStats:
        """Write ``rec``'s images as of ``now``: the whole memory, or only what was dirtied."""
        started = time.monotonic()
        name, memory = str(rec["name"]), int(rec["memory"])  # type: ignore[call-overload]
        dirty = self._snapshot(rec, now)
        total = pages(memory)
        written = 0 if lazy else total if whole else dirty
        frozen = self.model.dump_fixed_ms if lazy else dump_ms(self.model, written * PAGE)
        time.sleep(frozen / 1000)
        images.mkdir(parents=True, exist_ok=True)
        snap = {**rec, "counter": self.counter(rec, now) + 1, "state": "frozen"}
        (images / "sim.json").write_text(json.dumps(snap))
        if whole and not lazy:
            copy_sparse(self._mem(name), images / "pages-1.img")
            (images / "pagemap-1.img").write_bytes(PAGEMAP)
        else:
            with open(images / "pages-1.img", "wb") as f:
                f.truncate(written * PAGE)
        (images / "ferry-container.json").write_text(json.dumps({"name": name}))
        size = sum(p.stat().st_size for p in images.iterdir() if p.is_file())
        return DumpStats(
            freezing_ms=0.0,
            frozen_ms=frozen,
            memdump_ms=frozen,
            memwrite_ms=0.0,
            pages_scanned=total,
            pages_skipped_parent=total - written if not whole else 0,
            pages_written=written,
            pages_lazy=total if lazy else 0,
            wall_ms=(time.monotonic() - started) * 1000,
            image_bytes=size,
        )

    def checkpoint(
        self,
        name: str,
        images: Path,
        *,
        leave_running: bool = False,
        parent: Path | None = None,
        pages: PagesTarget | None = None,
    ) -> DumpStats:
        """A modelled dump: whole, or with ``parent`` only the pages dirtied since it."""
        if pages is not None:
            raise CapabilityError("the sim runtime has no CRIU page server: dump to files")
        rec = self._live(name)
        now = time.time()
        self._write_log(rec, now)
        stats = self._dump(rec, images, now, whole=parent is None)
        if not leave_running:
            self._save({**rec, "counter": self.counter(rec, now) + 1, "state": "frozen"})
        return stats

    def predump(self, name: str, images: Path, parent: Path | None) -> DumpStats:
        """A modelled soft-dirty pass (the sim kernel tracks dirty pages): the container runs on."""
        return self._dump(self._live(name), images, time.time(), whole=parent is None)

    def checkpoint_lazy(
        self, name: str, images: Path, address: str, port: int, parent: Path | None = None
    ) -> float:
        """A modelled post-copy dump: frozen for the fixed cost only, pages stay behind."""
        rec = self._live(name)
        frozen_at = time.time()
        self._write_log(rec, frozen_at)
        self._dump(rec, images, frozen_at, whole=True, lazy=True)
        self._save({**rec, "counter": self.counter(rec, frozen_at) + 1, "state": "frozen"})
        (images / "sim-lazy.json").write_text(json.dumps({"memory": rec["memory"]}))
        return frozen_at

    def wait_lazy(
        self, name: str, images: Path, timeout_s: float, served: Served | None = None
    ) -> DumpStats:
        """Pages flow at the modelled dump speed once the destination pulls them."""
        memory = json.loads((images / "sim-lazy.json").read_text())["memory"]
        took = self.model.dump_ms_per_mb * memory / MIB
        started = time.monotonic()
        while (left := min(took, timeout_s * 1000) / 1000 - (time.monotonic() - started)) > 0:
            time.sleep(min(left, 0.25))
            if served is not None:
                served(int(memory * min(1.0, (time.monotonic() - started) * 1000 / took)))
        return DumpStats(
            freezing_ms=0.0,
            frozen_ms=took,
            memdump_ms=took,
            memwrite_ms=0.0,
            pages_scanned=memory // PAGE,
            pages_skipped_parent=0,
            pages_written=0,
            pages_lazy=memory // PAGE,
            wall_ms=took,
            image_bytes=0,
        )

    def restore(
        self, name: str, images: Path, page_server: LazySource | None = None
    ) -> RestoreStats:
        """A modelled restore; with ``page_server`` (post-copy) the pages come later."""
        check_container_name(name)
        snap = json.loads((images / "sim.json").read_text())
        if snap["name"] != name:
            raise PermanentError(f"images in {images} are of {snap['name']!r}, not {name!r}")
        if self._path(name).exists() and self._load(name)["state"] != "exited":
            raise BadRequest(f"container {name!r} already runs on this node")
        started = time.monotonic()
        took = restore_ms(self.model, snap["memory"], lazy=page_server is not None)
        time.sleep(took / 1000)
        self._fresh_memory(name, snap["memory"])
        self._save(
            {**snap, "state": "running", "since": time.time(), "logged": snap["counter"] - 1}
        )
        return RestoreStats(
            pid=0,
            restore_ms=took,
            forking_ms=0.0,
            pages_restored=snap["memory"] // PAGE,
            wall_ms=(time.monotonic() - started) * 1000,
        )

    def resume(self, name: str, images: Path | None = None) -> ContainerInfo:
        rec = self._load(name)
        if rec["state"] == "frozen":
            rec.update(state="running", since=time.time())
            self._save(rec)
        return self._info(rec)

    def kill(self, name: str) -> None:
        self._load(name)
        self._path(name).unlink(missing_ok=True)
        self._mem(name).unlink(missing_ok=True)

    def admit(self, name: str) -> dict[str, Any]:
        return {}  # a container of this runtime needs nothing of its destination but the name

    def carry(self, name: str, into: Path, peer: dict[str, Any]) -> int:
        return 0
