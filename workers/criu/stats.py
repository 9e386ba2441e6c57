"""CRIU's stats images, decoded with a few lines of protobuf: what a dump and a restore cost."""

from __future__ import annotations

import struct
from pathlib import Path

from workers.records import DumpStats

DUMP_FIELDS = {
    1: "freezing_time",
    2: "frozen_time",
    3: "memdump_time",
    4: "memwrite_time",
    5: "pages_scanned",
    6: "pages_skipped_parent",
    7: "pages_written",
    9: "pages_lazy",
}
RESTORE_FIELDS = {3: "forking_time", 4: "restore_time", 5: "pages_restored"}


def dump_stats(images: Path, wall_ms: float) -> DumpStats:
    """Read CRIU's stats-dump image of a finished dump in ``images``."""
    f = read_stats(images / "stats-dump", 1, DUMP_FIELDS)
    size = sum(p.stat().st_size for p in images.iterdir() if p.is_file())
    return DumpStats(
        freezing_ms=f.get("freezing_time", 0) / 1000,
        frozen_ms=f.get("frozen_time", 0) / 1000,
        memdump_ms=f.get("memdump_time", 0) / 1000,
        memwrite_ms=f.get("memwrite_time", 0) / 1000,
        pages_scanned=f.get("pages_scanned", 0),
        pages_skipped_parent=f.get("pages_skipped_parent", 0),
        pages_written=f.get("pages_written", 0),
        pages_lazy=f.get("pages_lazy", 0),
        wall_ms=wall_ms,
        image_bytes=size,
    )


def read_stats(path: Path, entry_field: int, names: dict[int, str]) -> dict[str, int]:
    """Decode one CRIU stats image: two magics, a size, a stats_entry message."""
    try:
        data = path.read_bytes()
    except OSError:
        return {}
    if len(data) < 12:
        return {}
    (size,) = struct.unpack_from("<I", data, 8)
    outer = _fields(data[12 : 12 + size])
    inner = outer.get(entry_field)
    if not isinstance(inner, bytes):
        return {}
    return {names[k]: v for k, v in _fields(inner).items() if k in names and isinstance(v, int)}


def _fields(buf: bytes) -> dict[int, int | bytes]:
    """The varint and length-delimited fields of one protobuf message."""
    out: dict[int, int | bytes] = {}
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            out[number], pos = _varint(buf, pos)
        elif wire == 2:
            length, pos = _varint(buf, pos)
            out[number], pos = buf[pos : pos + length], pos + length
        elif wire in (1, 5):
            pos += 8 if wire == 1 else 4
        else:
            break
    return out


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
