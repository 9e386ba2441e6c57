"""Pages packs: what the uffd-wp tracker's passes send, and the final images built from them.

A pass of the tracker reads the pages written since the last one from the
running tree and writes them into a pack, ``pages.pack``: the 8-byte magic
``b"FERRYPK1"``, the page size (u32, little-endian), then records, each
``vpid u32, pages u32, address u64`` (the process's pid in the container's
pid namespace, as CRIU names its images) followed by the pages' bytes.

At the final dump the source splits CRIU's images (:func:`split_final`):
every file goes as it is but the pages images of the processes' pagemaps,
whose pages go in a pack only where the destination does not already hold
them (written since they were sent, or never tracked), with a manifest that
gives each pages image's size and BLAKE3. The destination rebuilds those
pages images from the packs of every pass and the final one, the later
winning (:func:`build_final`), and checks each against the manifest before a
restore may use it.

A CRIU pagemap image: two u32 magics, then entries each a u32 size and a
protobuf message: first ``pagemap_head`` (field 1: ``pages_id``), then
``pagemap_entry`` (1: vaddr, 2: nr_pages, 3: in_parent, 4: flags). The pages
of the entries flagged ``PE_PRESENT`` lie in ``pages-<pages_id>.img`` in order.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import repeat
from pathlib import Path
from typing import IO, Any

import blake3

from workers.errors import BadRequest, IntegrityError

PACK = "pages.pack"
MANIFEST = "tracker-manifest.json"
MAGIC = b"FERRYPK1"
_HEAD = struct.Struct("<8sI")
_REC = struct.Struct("<IIQ")
PE_PARENT, PE_PRESENT = 1 << 0, 1 << 2
_PAGEMAP = re.compile(r"^pagemap-(\d+)\.img\Z")


class PackWriter:
    """Writes one pack file; use as a context manager."""

    def __init__(self, path: Path, page_size: int) -> None:
        self.path, self.page = path, page_size
        self.pages = 0
        self._f: IO[bytes] = open(path, "wb")  # noqa: SIM115 - closed by __exit__
        self._f.write(_HEAD.pack(MAGIC, page_size))

    def add(self, vpid: int, addr: int, data: memoryview | bytes) -> None:
        n = len(data) // self.page
        self._f.write(_REC.pack(vpid, n, addr))
        self._f.write(data)
        self.pages += n

    def __enter__(self) -> PackWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self._f.close()


def records(path: Path) -> Iterator[tuple[int, int, int, int]]:
    """(vpid, address, pages, offset of their bytes) of each record of a pack."""
    with open(path, "rb") as f:
        magic, page = _HEAD.unpack(f.read(_HEAD.size))
        if magic != MAGIC:
            raise BadRequest(f"{path.name}: not a ferry pages pack")
        size, at = os.fstat(f.fileno()).st_size, _HEAD.size
        while at < size:
            head = f.read(_REC.size)
            if len(head) != _REC.size:
                raise BadRequest(f"{path.name}: truncated")
            vpid, n, addr = _REC.unpack(head)
            at += _REC.size
            if at + n * page > size:
                raise BadRequest(f"{path.name}: truncated")
            yield vpid, addr, n, at
            at += n * page
            f.seek(at)


def page_size(path: Path) -> int:
    with open(path, "rb") as f:
        magic, page = _HEAD.unpack(f.read(_HEAD.size))
    if magic != MAGIC or page not in (4096, 16384, 65536):
        raise BadRequest(f"{path.name}: not a ferry pages pack")
    return int(page)


def _varint(b: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if i >= len(b):
            raise BadRequest("truncated varint in a pagemap image")
        byte = b[i]
        value |= (byte & 0x7F) << shift
        i, shift = i + 1, shift + 7
        if byte < 0x80:
            return value, i


def _fields(msg: bytes) -> dict[int, int]:
    out, i = {}, 0
    while i < len(msg):
        key, i = _varint(msg, i)
        if key & 7 != 0:
            raise BadRequest("a pagemap image with a field that is not a varint")
        out[key >> 3], i = _varint(msg, i)
    return out


def pagemap(path: Path) -> tuple[int, list[tuple[int, int]]]:
    """A pagemap image's pages id and its present runs (vaddr, pages) in file order."""
    data = path.read_bytes()
    at, msgs = 8, []
    while at < len(data):
        (n,) = struct.unpack_from("<I", data, at)
        msgs.append(_fields(data[at + 4 : at + 4 + n]))
        at += 4 + n
    if not msgs or 1 not in msgs[0]:
        raise BadRequest(f"{path.name}: no pagemap head")
    runs = []
    for e in msgs[1:]:
        flags = e.get(4, PE_PARENT if e.get(3) else PE_PRESENT)
        if flags & PE_PARENT:
            raise BadRequest(f"{path.name}: pages in a parent image (not a tracker dump)")
        if flags & PE_PRESENT:
            runs.append((e[1], e[2]))
    return msgs[0][1], runs


@dataclass(frozen=True)
class FinalStats:
    pages_total: int  # in the pages images split
    pages_sent: int  # of them, in the final pack
    bytes_out: int  # everything to send
    hash_ms: float  # BLAKE3 of the pages images (for the destination's check)
    seconds: float


def split_final(images: Path, clean: dict[int, set[int]], out: Path) -> FinalStats:
    """Write into ``out`` (absent) what the destination needs, beside the packs of the
    passes, to rebuild ``images``: the pages in ``clean[vpid]`` are left out."""
    started = time.monotonic()
    out.mkdir(parents=True)
    split: dict[str, Any] = {}
    total = sent = 0
    hash_s = 0.0
    page = os.sysconf("SC_PAGE_SIZE")
    with PackWriter(out / PACK, page) as pack:
        for pm in sorted(images.glob("pagemap-*.img")):
            if not (match := _PAGEMAP.match(pm.name)):
                continue  # shmem and the like: their pages images go whole
            vpid = int(match[1])
            pages_id, runs = pagemap(pm)
            name = f"pages-{pages_id}.img"
            keep = clean.get(vpid, set())
            with open(images / name, "rb") as src:
                at = 0
                for addr, n in runs:
                    for i in range(n):
                        if addr + i * page not in keep:
                            pack.add(
                                vpid, addr + i * page, os.pread(src.fileno(), page, at + i * page)
                            )
                            sent += 1
                    at += n * page
            h0 = time.monotonic()
            digest = blake3.blake3(max_threads=blake3.blake3.AUTO).update_mmap(images / name)
            hash_s += time.monotonic() - h0
            split[name] = {
                "vpid": vpid,
                "pagemap": pm.name,
                "size": at,
                "blake3": digest.hexdigest(),
            }
            total += sum(n for _, n in runs)
    for f in images.iterdir():
        if f.is_file() and f.name not in split and not f.name.endswith((".log", ".done")):
            try:
                os.link(f, out / f.name)
            except OSError:
                shutil.copyfile(f, out / f.name)
    (out / MANIFEST).write_text(
        json.dumps({"format": "ferry-tracker", "version": 1, "pages": split})
    )
    return FinalStats(
        pages_total=total,
        pages_sent=sent,
        bytes_out=sum(p.stat().st_size for p in out.iterdir()),
        hash_ms=round(hash_s * 1000, 3),
        seconds=time.monotonic() - started,
    )


def _copy(src: int, dst: int, offset: int, size: int) -> None:
    """``size`` bytes of ``src`` at ``offset`` appended to ``dst``, copied by the kernel."""
    while size:
        n = os.copy_file_range(src, dst, size, offset)
        if n <= 0:
            raise IntegrityError("a pages pack ended early")
        offset, size = offset + n, size - n


def _spans(
    where: dict[int, tuple[int, int]],
    runs: list[tuple[int, int]],
    page: int,
    name: str,
) -> Iterator[tuple[int, int, int]]:
    """(pack, offset, pages) spans that make up a pages image, in its order: pages that lie
    one after another in one pack are read at once."""
    span: list[int] = []  # pack, offset, pages
    for addr, n in runs:
        for i, src in enumerate(map(where.get, range(addr, addr + n * page, page))):
            if src is None:
                raise IntegrityError(f"{name}: page {addr + i * page:#x} never arrived")
            if span and span[0] == src[0] and span[1] + span[2] * page == src[1]:
                span[2] += 1
                continue
            if span:
                yield span[0], span[1], span[2]
            span = [src[0], src[1], 1]
    if span:
        yield span[0], span[1], span[2]


def build_final(received: Path, passes: list[Path], target: Path) -> None:
    """Make ``target`` the full image set: ``received`` (split_final's) plus the pages of
    ``passes`` (the passes' packs, oldest first). IntegrityError when a page is missing
    or a pages image does not match its BLAKE3; ``target`` is then not made."""
    try:
        doc = json.loads((received / MANIFEST).read_text())
        split = doc["pages"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BadRequest(f"{received}: no readable {MANIFEST}") from exc
    where: dict[int, dict[int, tuple[int, int]]] = {}  # vpid -> page -> (pack, offset)
    packs = [*passes, received / PACK]
    page = page_size(received / PACK)
    for k, path in enumerate(packs):
        for vpid, addr, n, off in records(path):
            pages = range(addr, addr + n * page, page)
            where.setdefault(vpid, {}).update(
                zip(pages, zip(repeat(k), range(off, off + n * page, page)), strict=False)
            )
    files = [open(p, "rb") for p in packs]  # noqa: SIM115 - closed below
    try:
        for name, meta in split.items():
            if not re.match(r"^pages-\d+\.img\Z", name) or not _PAGEMAP.match(meta["pagemap"]):
                raise BadRequest(f"{MANIFEST}: bad entry {name!r}")
            _, runs = pagemap(received / meta["pagemap"])
            part = received / f".{name}.part"
            vpid = int(meta["vpid"])
            with open(part, "wb") as w:
                for k, off, count in _spans(where.get(vpid, {}), runs, page, name):
                    _copy(files[k].fileno(), w.fileno(), off, count * page)
            digest = blake3.blake3(max_threads=blake3.blake3.AUTO).update_mmap(part).hexdigest()
            if part.stat().st_size != meta["size"] or digest != meta["blake3"]:
                part.unlink()
                raise IntegrityError(
                    f"{name}: rebuilt from the passes, it does not match the source's dump "
                    f"(blake3 {meta['blake3'][:16]}...)"
                )
            os.replace(part, received / name)
    finally:
        for f in files:
            f.close()
    (received / PACK).unlink()
    (received / MANIFEST).unlink()
    os.rename(received, target)
