"""The ``sim`` runtime: a model of containers, honest about being one.

A simulated container is a counter that advances every 0.1 s while it runs,
with a memory size (label ``sim.memory``, bytes; default 64 MiB). Checkpoint
and restore take the time the model says and write a small image set (the
counter, plus a sparse pages file of up to ``image_cap`` bytes so the data
plane moves real bytes). The model's speeds come from real CRIU 4.1.1 on a
2-core x86 VM: a dump costs about 1.5 ms per MB frozen (56 ms at 64 MB,
812 ms at 512 MB) and a restore about 0.8 ms per MB. It stands in for CRIU
only where a test or demo says "simulated": never in a test that claims a
real migration.
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from workers.errors import BadRequest, PermanentError, UnknownContainer
from workers.runtime import ContainerInfo, DumpStats, RestoreStats, check_container_name

TICK_S = 0.1
PAGE = 4096


@dataclass(frozen=True)
class SimModel:
    """Costs of the simulated runtime (see the module docstring for their source)."""

    dump_fixed_ms: float = 20.0
    dump_ms_per_mb: float = 1.5
    restore_fixed_ms: float = 15.0
    restore_ms_per_mb: float = 0.8
    image_cap: int = 1 << 20
    default_memory: int = 64 << 20


class SimRuntime:
    """Simulated containers, kept in a JSON inventory like the criu runtime's."""

    name = "sim"

    def __init__(self, state_dir: Path, container_root: Path, model: SimModel | None = None) -> None:
        self.inventory = state_dir / "sim-containers"
        self.container_root = container_root
        self.model = model or SimModel()
        self.inventory.mkdir(parents=True, exist_ok=True)

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
        return ContainerInfo(name=str(rec["name"]), pid=0, argv=tuple(rec["argv"]),  # type: ignore[arg-type]
                             state=str(rec["state"]), memory_bytes=int(rec["memory"]),  # type: ignore[call-overload]
                             started=float(rec["started"]), log=str(rec["log"]),  # type: ignore[arg-type]
                             runtime=self.name, labels=dict(rec["labels"]))  # type: ignore[call-overload]

    def _write_log(self, rec: dict[str, object], at: float | None = None) -> None:
        """Bring the container's log up to its counter, as the real counter would."""
        if rec["state"] != "running":
            return
        now = self.counter(rec, time.time() if at is None else at)
        logged = int(rec.get("logged", -1))  # type: ignore[call-overload]
        if now > logged:
            base, since = int(rec["counter"]), float(rec["since"])  # type: ignore[call-overload, arg-type]
            with open(str(rec["log"]), "a") as f:
                f.writelines(f"tick {i} {since + (i - base) * TICK_S:.3f}\n"
                             for i in range(logged + 1, now + 1))
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

    def start(self, name: str, argv: list[str], labels: dict[str, str] | None = None,
              sync: tuple[str, ...] = ()) -> ContainerInfo:
        check_container_name(name)
        if sync:
            raise BadRequest("the sim runtime syncs no directories: run the container on criu nodes")
        if self._path(name).exists():
            raise BadRequest(f"container {name!r} already runs on this node")
        labels = dict(labels or {})
        try:
            memory = int(labels.get("sim.memory", self.model.default_memory))
        except ValueError as exc:
            raise BadRequest(f"bad sim.memory label {labels['sim.memory']!r}") from exc
        workdir = self.container_root / name
        workdir.mkdir(parents=True, exist_ok=True)
        rec: dict[str, object] = {"name": name, "argv": list(argv), "labels": labels, "memory": memory,
                                  "counter": 0, "since": time.time(), "state": "running",
                                  "started": time.time(), "log": str(workdir / "log"), "logged": -1}
        self._save(rec)
        return self._info(rec)

    def checkpoint(self, name: str, images: Path, *, leave_running: bool = False,
                   parent: Path | None = None) -> DumpStats:
        rec = self._load(name)
        if rec["state"] == "exited":
            raise PermanentError(f"container {name!r} is not running")
        frozen_at = time.time()
        self._write_log(rec, frozen_at)
        started = time.monotonic()
        memory = int(rec["memory"])  # type: ignore[call-overload]
        frozen = self.model.dump_fixed_ms + self.model.dump_ms_per_mb * memory / 2**20
        time.sleep(frozen / 1000)
        images.mkdir(parents=True, exist_ok=True)
        snap = {**rec, "counter": self.counter(rec, frozen_at) + 1, "state": "frozen"}
        (images / "sim.json").write_text(json.dumps(snap))
        with open(images / "pages-1.img", "wb") as f:
            f.truncate(min(memory, self.model.image_cap))
        (images / "ferry-container.json").write_text(json.dumps({"name": name}))
        if not leave_running:
            self._save(snap)
        size = sum(p.stat().st_size for p in images.iterdir() if p.is_file())
        return DumpStats(freezing_ms=0.0, frozen_ms=frozen, memdump_ms=frozen, memwrite_ms=0.0,
                         pages_scanned=memory // PAGE, pages_skipped_parent=0,
                         pages_written=memory // PAGE, pages_lazy=0,
                         wall_ms=(time.monotonic() - started) * 1000, image_bytes=size)

    def predump(self, name: str, images: Path, parent: Path | None) -> DumpStats:
        """A modelled soft-dirty pass: the sim kernel tracks dirty pages everywhere."""
        return self.checkpoint(name, images, leave_running=True)

    def checkpoint_lazy(self, name: str, images: Path, address: str, port: int,
                        parent: Path | None = None) -> float:
        """A modelled post-copy dump: frozen for the fixed cost only, pages stay behind."""
        rec = self._load(name)
        memory = int(rec["memory"])  # type: ignore[call-overload]
        frozen_at = time.time()
        lazy = SimModel(**{**self.model.__dict__, "dump_ms_per_mb": 0.0})
        SimRuntime(self.inventory.parent, self.container_root, lazy).checkpoint(name, images)
        (images / "sim-lazy.json").write_text(json.dumps({"memory": memory, "until": 0}))
        return frozen_at

    def wait_lazy(self, name: str, images: Path, timeout_s: float) -> DumpStats:
        """Pages flow at the modelled dump speed once the destination pulls them."""
        memory = json.loads((images / "sim-lazy.json").read_text())["memory"]
        took = self.model.dump_ms_per_mb * memory / 2**20
        time.sleep(min(took, timeout_s * 1000) / 1000)
        return DumpStats(freezing_ms=0.0, frozen_ms=took, memdump_ms=took, memwrite_ms=0.0,
                         pages_scanned=memory // PAGE, pages_skipped_parent=0, pages_written=0,
                         pages_lazy=memory // PAGE, wall_ms=took, image_bytes=0)

    def restore(self, name: str, images: Path,
                page_server: tuple[str, int] | None = None) -> RestoreStats:
        snap = json.loads((images / "sim.json").read_text())
        if snap["name"] != name:
            raise PermanentError(f"images in {images} are of {snap['name']!r}, not {name!r}")
        if self._path(name).exists() and self._load(name)["state"] != "exited":
            raise BadRequest(f"container {name!r} already runs on this node")
        started = time.monotonic()
        per_mb = 0.0 if page_server else self.model.restore_ms_per_mb
        took = self.model.restore_fixed_ms + per_mb * snap["memory"] / 2**20
        time.sleep(took / 1000)
        self._save({**snap, "state": "running", "since": time.time(), "logged": snap["counter"] - 1})
        return RestoreStats(pid=0, restore_ms=took, forking_ms=0.0,
                            pages_restored=snap["memory"] // PAGE,
                            wall_ms=(time.monotonic() - started) * 1000)

    def resume(self, name: str, images: Path | None = None) -> ContainerInfo:
        rec = self._load(name)
        if rec["state"] == "frozen":
            rec.update(state="running", since=time.time())
            self._save(rec)
        return self._info(rec)

    def kill(self, name: str) -> None:
        self._load(name)
        self._path(name).unlink(missing_ok=True)
