"""Delta pre-copy: ship only the blocks of CRIU's page images that changed.

Without soft-dirty tracking (no ``criu pre-dump --track-mem``), the ``delta``
strategy takes full snapshots while the container runs (``criu dump
--leave-running``) and sends, of each page image, only the blocks that differ
from the copy the destination already holds. A page image is compared block by
block only where the memory map did not change between the passes (every
pagemap image indexing it byte-identical, same size), so each page sits at the
same offset in both; everything else, and everything on the first pass, ships
whole. :func:`make_delta` (source) writes the files to send; :func:`apply_delta`
(destination) rebuilds the full image set from its previous one, verified.

What :func:`make_delta` writes into ``out``:

``delta-manifest.json``
    ``{"format": "ferry-delta", "version": 1, "block": 4096, "files": [{"name":
    "pages-1.img", "size": 72228864, "blake3": "<64 hex>", "ship": "delta"}]}``:
    every file of the target image set with its size and BLAKE3, and how it is
    shipped: ``whole`` (``out/<name>``) or ``delta`` (``out/<name>.delta``,
    which patches the previous pass's ``<name>``).
``<name>.delta`` (little-endian)
    A 96-byte header: magic ``b"FERRYDLT"``, version u16 (1), flags u16 (0),
    block size u32, target size u64 (the base's too), run count u64, BLAKE3 of
    the whole target file (64 hex ASCII bytes). Then the runs, in increasing
    block order, none overlapping: first block u64, block count u32, the blocks'
    bytes (``count * block``; the file's last block may be short).
``<name>``
    A file shipped whole: a hard link to ``cur``'s where possible, else a copy.
"""

from __future__ import annotations

import json
import mmap
import os
import re
import shutil
import struct
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import blake3

from workers.errors import BadRequest, IntegrityError

MANIFEST = "delta-manifest.json"
SUFFIX = ".delta"
MAGIC = b"FERRYDLT"
VERSION = 1
_HEADER = struct.Struct("<8sHHIQQ64s")
_RUN = struct.Struct("<QI")
_CHUNK_BLOCKS = 256  # compare 1 MiB at once; only a chunk that differs is split into blocks
_SKIP = (".log", ".done")  # CRIU's logs and ferry's phase markers are not images
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,200}\Z")
_HEX = re.compile(r"^[0-9a-f]{64}\Z")


@dataclass(frozen=True)
class DeltaStats:
    """What one delta pass compared and wrote."""

    files_whole: int
    files_delta: int
    bytes_total: int  # the target image set (cur)
    bytes_out: int  # what is to be sent: everything written to out
    blocks_changed: int  # of the pages images; one shipped whole counts whole
    blocks_total: int  # of the pages images
    seconds: float


@dataclass(frozen=True)
class _Entry:
    name: str
    size: int
    blake3: str
    ship: str  # "whole" | "delta"


def make_delta(prev: Path | None, cur: Path, out: Path, block: int = 4096) -> DeltaStats:
    """Write into ``out`` what turns the destination's copy of ``prev`` into ``cur``.

    ``prev`` None or absent (the first pass) ships everything whole. ``out``
    must be absent or empty; it appears complete or not at all. Whole files in
    ``out`` may be hard links to ``cur``'s: read them, never write them.
    """
    started = time.monotonic()
    if not 0 < block <= 1 << 20:
        raise BadRequest(f"bad block size {block}: want 1 B to 1 MiB")
    names = sorted(
        _check_name(p.name)
        for p in cur.iterdir()
        if p.is_file() and not p.is_symlink() and not p.name.endswith(_SKIP)
    )
    comparable = _comparable_pages(prev, cur) if prev is not None and prev.is_dir() else set()
    entries: list[_Entry] = []
    changed = total = 0
    with _staged(out) as tmp:
        for name in names:
            src, size = cur / name, (cur / name).stat().st_size
            if (
                size
                and prev is not None
                and name in comparable
                and (prev / name).stat().st_size == size
            ):
                digest, blocks = _diff(prev / name, src, tmp / (name + SUFFIX), block)
                entries.append(_Entry(name, size, digest, "delta"))
                changed, total = changed + blocks, total + -(-size // block)
            else:
                _link_or_copy(src, tmp / name)
                entries.append(_Entry(name, size, _hash(src), "whole"))
                if name.startswith("pages-"):  # every block of it goes: all changed
                    blocks = -(-size // block)
                    changed, total = changed + blocks, total + blocks
        doc = {
            "format": "ferry-delta",
            "version": VERSION,
            "block": block,
            "files": [vars(e) for e in entries],
        }
        (tmp / MANIFEST).write_text(json.dumps(doc, indent=1))
        bytes_out = sum(p.stat().st_size for p in tmp.iterdir())
    n_delta = sum(e.ship == "delta" for e in entries)
    return DeltaStats(
        files_whole=len(entries) - n_delta,
        files_delta=n_delta,
        bytes_total=sum(e.size for e in entries),
        bytes_out=bytes_out,
        blocks_changed=changed,
        blocks_total=total,
        seconds=time.monotonic() - started,
    )


def apply_delta(base: Path | None, received: Path, target: Path) -> None:
    """Build the image set that ``received``'s manifest describes into ``target``, verified.

    ``base`` is the previous pass's full image set (None on the first pass),
    which is used up: its files are patched in place and the dir becomes
    ``target``, so no pass copies the whole image again (an SD card's write
    budget, and the final pass's freeze window). ``target`` must be absent or
    empty. Raises BadRequest for a malformed manifest or delta, IntegrityError
    when a built file does not match its size and BLAKE3 or the base is not the
    one the delta was made against; ``target`` is then left as it was.

    Safe to run again on a base a crash left half-patched: a run writes each
    changed block's new bytes at its offset and puts whole files in place, so
    repeating it gives the same files, and nothing is renamed to ``target``
    before every file matches its BLAKE3.
    """
    block, entries = _read_manifest(received)
    if base is None:
        with _staged(target) as tmp:
            _build(tmp, received, entries, block)
        return
    if target.exists() and any(target.iterdir()):
        raise BadRequest(f"{target} is not empty: it holds an earlier pass")
    if not base.is_dir():
        raise IntegrityError(f"{base}: no copy from the previous pass to patch")
    _build(base, received, entries, block)
    keep = {e.name for e in entries}
    for stale in base.iterdir():  # images the new dump no longer has
        if stale.name not in keep:
            stale.unlink()
    if target.exists():
        target.rmdir()
    os.rename(base, target)


def _build(into: Path, received: Path, entries: list[_Entry], block: int) -> None:
    """Make each of ``entries`` in ``into``: whole files put in place, deltas patched in place."""
    for e in entries:
        built = into / e.name
        if e.ship == "whole":
            part = into / f".{e.name}.part"
            part.unlink(missing_ok=True)
            _link_or_copy(_received(received, e.name), part)
            os.replace(part, built)
        elif not built.is_file() or built.is_symlink():
            raise IntegrityError(f"{e.name}: no copy from the previous pass to patch")
        else:
            _patch(_received(received, e.name + SUFFIX), built, e, block)
        size = built.stat().st_size
        if size != e.size or _hash(built) != e.blake3:
            raise IntegrityError(
                f"{e.name}: built {size} B that do not match the manifest "
                f"({e.size} B, blake3 {e.blake3[:16]}...)"
            )


@contextmanager
def _staged(final: Path) -> Iterator[Path]:
    """A temp dir beside ``final`` that becomes ``final`` if the block succeeds, else vanishes."""
    if final.exists() and any(final.iterdir()):
        raise BadRequest(f"{final} is not empty: it holds an earlier pass")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".ferry-delta-", dir=final.parent))
    try:
        yield tmp
        os.rename(tmp, final)  # replaces an empty final
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _comparable_pages(prev: Path, cur: Path) -> set[str]:
    """The pages images of ``cur`` whose pagemaps are all byte-identical in ``prev``."""
    before, after = _pagemaps(prev), _pagemaps(cur)
    if None in before or None in after:
        return set()  # a pagemap we cannot read might index any pages image
    return {f"pages-{i}.img" for i, maps in after.items() if maps == before.get(i)}


def _pagemaps(images: Path) -> dict[int | None, dict[str, bytes]]:
    """Every pagemap image's bytes, grouped by the id of the pages image it indexes."""
    groups: dict[int | None, dict[str, bytes]] = {}
    for path in images.glob("pagemap*.img"):
        data = path.read_bytes()
        groups.setdefault(_pages_id(data), {})[path.name] = data
    return groups


def _pages_id(pagemap: bytes) -> int | None:
    """``pagemap_head.pages_id``: after two magics and a u32 size, protobuf field 1 (a varint)."""
    if len(pagemap) < 14 or pagemap[12] != 0x08:
        return None
    value = 0
    for i, byte in enumerate(pagemap[13:18]):
        value |= (byte & 0x7F) << 7 * i
        if byte < 0x80:
            return value
    return None


def _diff(old: Path, new: Path, delta: Path, block: int) -> tuple[str, int]:
    """Write ``delta``: the blocks of ``new`` that differ from ``old`` (same size).

    Returns new's BLAKE3 and how many blocks changed.
    """
    size = new.stat().st_size
    before = _map(old)
    if len(before) != size:
        raise IntegrityError(f"{old} changed size while being compared")
    buf = bytearray(block * _CHUNK_BLOCKS)
    runs = changed = offset = 0
    with ThreadPoolExecutor(1) as pool, open(new, "rb") as f, open(delta, "wb") as w:
        hashed = pool.submit(_hash, new, 1)  # on the other core, while this one compares
        w.write(bytes(_HEADER.size))
        while n := f.readinto(buf):  # buffered: fills buf up to the end of the file
            view, was = memoryview(buf)[:n], before[offset : offset + n]
            if not buf.startswith(was):
                for start, end in _runs(buf, was, block):
                    count = -(-(end - start) // block)
                    w.write(_RUN.pack((offset + start) // block, count))
                    w.write(view[start:end])
                    runs, changed = runs + 1, changed + count
            offset += n
        digest = hashed.result()
        w.seek(0)
        w.write(_HEADER.pack(MAGIC, VERSION, 0, block, size, runs, digest.encode()))
    return digest, changed


def _runs(new: bytearray, old: memoryview, block: int) -> Iterator[tuple[int, int]]:
    """(start, end) offsets of the runs of blocks where ``new`` differs from ``old``."""
    start = -1
    for off in range(0, len(old), block):
        same = new.startswith(old[off : off + block], off)
        if same and start >= 0:
            yield start, off
            start = -1
        elif not same and start < 0:
            start = off
    if start >= 0:
        yield start, len(old)


def _map(path: Path) -> memoryview:
    """``path`` mapped read-only, its pages faulted in up front rather than one by one."""
    with open(path, "rb") as f:
        flags = mmap.MAP_SHARED | mmap.MAP_POPULATE
        return memoryview(mmap.mmap(f.fileno(), 0, flags=flags, prot=mmap.PROT_READ))


def _patch(delta: Path, built: Path, e: _Entry, block: int) -> None:
    """Write ``delta``'s runs into ``built``, the base file, in place."""
    with open(delta, "rb") as f, open(built, "r+b", buffering=0) as out:
        head = f.read(_HEADER.size)
        if len(head) != _HEADER.size:
            raise BadRequest(f"{delta.name}: truncated header")
        magic, version, _flags, blk, size, runs, digest = _HEADER.unpack(head)
        if magic != MAGIC or version != VERSION:
            raise BadRequest(f"{delta.name}: not a ferry delta (version {VERSION})")
        if blk != block or size != e.size or digest != e.blake3.encode():
            raise BadRequest(f"{delta.name}: its header disagrees with the manifest")
        if os.fstat(out.fileno()).st_size != size:
            raise IntegrityError(
                f"{e.name}: the previous pass's copy is not the one the "
                "delta was made against (its size differs)"
            )
        nblocks, free = -(-size // block), 0
        for _ in range(runs):
            record = f.read(_RUN.size)
            if len(record) != _RUN.size:
                raise BadRequest(f"{delta.name}: truncated")
            first, count = _RUN.unpack(record)
            if count == 0 or first < free or first + count > nblocks:
                raise BadRequest(
                    f"{delta.name}: blocks {first}+{count} out of range or order ({nblocks} blocks)"
                )
            length = min(count * block, size - first * block)
            if len(data := f.read(length)) != length:
                raise BadRequest(f"{delta.name}: truncated")
            os.pwrite(out.fileno(), data, first * block)
            free = first + count
        if f.read(1):
            raise BadRequest(f"{delta.name}: bytes after its last run")


def _read_manifest(received: Path) -> tuple[int, list[_Entry]]:
    """The block size and entries of ``received``'s manifest; BadRequest if it is malformed."""
    try:
        doc: Any = json.loads((received / MANIFEST).read_text())
    except (OSError, ValueError) as exc:
        raise BadRequest(f"no readable {MANIFEST} in {received}: {exc}") from exc
    if not (
        isinstance(doc, dict)
        and doc.get("format") == "ferry-delta"
        and doc.get("version") == VERSION
        and isinstance(doc.get("files"), list)
        and type(doc.get("block")) is int
        and 0 < doc["block"] <= 1 << 20
    ):
        raise BadRequest(f"{MANIFEST}: not a ferry delta manifest (version {VERSION})")
    for f in doc["files"]:
        if not (
            isinstance(f, dict)
            and isinstance(f.get("name"), str)
            and type(f.get("size")) is int
            and f["size"] >= 0
            and isinstance(f.get("blake3"), str)
            and _HEX.match(f["blake3"])
            and f.get("ship") in ("whole", "delta")
        ):
            raise BadRequest(f"{MANIFEST}: bad entry {f!r:.120}")
    entries = [
        _Entry(_check_name(f["name"]), f["size"], f["blake3"], f["ship"]) for f in doc["files"]
    ]
    if len({e.name for e in entries}) != len(entries):
        raise BadRequest(f"{MANIFEST}: a file is listed twice")
    return doc["block"], entries


def _check_name(name: str) -> str:
    """``name`` if it is a plain image file name (no ``/``, no ``..``), else BadRequest."""
    if not _NAME.match(name) or ".." in name or name == MANIFEST or name.endswith(SUFFIX):
        raise BadRequest(
            f"bad image file name {name!r:.80}: want 1-200 of A-Z a-z 0-9 _ . - "
            f"without '..', not {MANIFEST} nor *{SUFFIX}"
        )
    return name


def _received(received: Path, name: str) -> Path:
    path = received / name
    if path.is_symlink() or not path.is_file():
        raise IntegrityError(f"{name} did not arrive in {received}")
    return path


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another filesystem, or links not allowed
        shutil.copyfile(src, dst)


def _hash(path: Path, threads: int = blake3.blake3.AUTO) -> str:
    return blake3.blake3(max_threads=threads).update_mmap(path).hexdigest()
