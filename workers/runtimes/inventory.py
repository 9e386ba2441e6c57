"""A node's inventory of one runtime's containers: one JSON file per container.

The inventory is the authority on what the node manages: a runtime checkpoints
or kills only what is in it. The criu and oci runtimes keep their entries (frozen
dataclasses) here; fields named in ``tuples`` are tuples in the dataclass and
lists in JSON.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any, Generic, TypeVar

from workers.errors import UnknownContainer
from workers.ids import check_container_name

E = TypeVar("E")


class Inventory(Generic[E]):
    """Entries of type ``kind`` kept as ``<root>/<name>.json``."""

    def __init__(self, root: Path, kind: Callable[..., E], tuples: tuple[str, ...] = ()) -> None:
        self.root = root
        self.kind = kind
        self.tuples = tuples
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)

    def path(self, name: str) -> Path:
        return self.root / f"{check_container_name(name)}.json"

    def has(self, name: str) -> bool:
        return self.path(name).exists()

    def load(self, name: str) -> E:
        try:
            raw = json.loads(self.path(name).read_text())
        except FileNotFoundError:
            raise UnknownContainer(name) from None
        return self.from_dict(raw)

    def from_dict(self, raw: dict[str, Any]) -> E:
        """An entry from its JSON (an inventory file, or the copy beside a checkpoint)."""
        for key in self.tuples:
            raw[key] = tuple(raw.get(key, ()))
        return self.kind(**raw)

    def save(self, entry: E) -> None:
        raw: dict[str, Any] = asdict(entry)  # type: ignore[call-overload]
        path = self.path(str(raw["name"]))
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(raw))
        os.replace(tmp, path)

    def drop(self, name: str) -> None:
        self.path(name).unlink(missing_ok=True)

    def entries(self) -> list[E]:
        """Every readable entry, by name (a torn or foreign file is passed over)."""
        out = []
        for path in sorted(self.root.glob("*.json")):
            try:
                out.append(self.load(path.stem))
            except (UnknownContainer, ValueError, TypeError, KeyError):
                continue
        return out
