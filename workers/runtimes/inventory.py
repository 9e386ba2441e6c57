"""The ``criu`` runtime's inventory: one JSON file per container under ``<state>/containers``.

It is the authority on what the node manages: nothing outside it is ever
checkpointed or killed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from workers.errors import UnknownContainer
from workers.ids import check_container_name


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


class Inventory:
    """The entries in one directory, each written whole (a rename)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True, mode=0o700)

    def path(self, name: str) -> Path:
        return self.root / f"{check_container_name(name)}.json"

    def has(self, name: str) -> bool:
        return self.path(name).exists()

    def load(self, name: str) -> Entry:
        try:
            raw = json.loads(self.path(name).read_text())
        except FileNotFoundError:
            raise UnknownContainer(name) from None
        raw["argv"] = tuple(raw["argv"])
        raw["sync"] = tuple(raw.get("sync", ()))
        return Entry(**raw)

    def save(self, entry: Entry) -> None:
        path = self.path(entry.name)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(entry)))
        os.replace(tmp, path)

    def drop(self, name: str) -> None:
        self.path(name).unlink(missing_ok=True)

    def names(self) -> Iterator[str]:
        return (p.stem for p in sorted(self.root.glob("*.json")))
