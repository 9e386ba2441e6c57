"""Pages packs and CRIU pagemaps, as the uffd-wp tracker's final step reads and writes them."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from workers.errors import BadRequest, IntegrityError
from workers.tracker import pack
from workers.tracker.tracker import _gaps, _merge

PAGE = 4096


def varint(n: int) -> bytes:
    out = b""
    while True:
        byte, n = n & 0x7F, n >> 7
        out += bytes([byte | (0x80 if n else 0)])
        if not n:
            return out


def message(fields: dict[int, int]) -> bytes:
    body = b"".join(varint(k << 3) + varint(v) for k, v in fields.items())
    return struct.pack("<I", len(body)) + body


def pagemap(path: Path, pages_id: int, runs: list[tuple[int, int, int]]) -> None:
    """A CRIU pagemap image: magics, the head, then (vaddr, nr_pages, flags) entries."""
    data = struct.pack("<II", 0x54564319, 0x56084025) + message({1: pages_id})
    data += b"".join(message({1: a, 2: n, 4: f}) for a, n, f in runs)
    path.write_bytes(data)


def test_pagemap_lists_the_present_runs_in_file_order(tmp_path: Path) -> None:
    pagemap(tmp_path / "pagemap-1.img", 7, [(0x1000, 2, pack.PE_PRESENT), (0x9000, 1, 0)])
    assert pack.pagemap(tmp_path / "pagemap-1.img") == (7, [(0x1000, 2)])
    pagemap(tmp_path / "pagemap-2.img", 7, [(0x1000, 2, pack.PE_PARENT)])
    with pytest.raises(BadRequest, match="parent"):
        pack.pagemap(tmp_path / "pagemap-2.img")


def test_a_pack_round_trips_its_records(tmp_path: Path) -> None:
    with pack.PackWriter(tmp_path / "p", PAGE) as w:
        w.add(1, 0x1000, b"a" * 2 * PAGE)
        w.add(3, 0x7000, b"b" * PAGE)
    assert [(v, a, n) for v, a, n, _ in pack.records(tmp_path / "p")] == [
        (1, 0x1000, 2),
        (3, 0x7000, 1),
    ]
    (tmp_path / "p").write_bytes((tmp_path / "p").read_bytes()[:-1])
    with pytest.raises(BadRequest, match="truncated"):
        list(pack.records(tmp_path / "p"))


def images(d: Path, pages: dict[int, bytes]) -> None:
    """A CRIU-like image set of one process (vpid 1) holding ``pages`` (address: bytes)."""
    d.mkdir()
    addrs = sorted(pages)
    pagemap(d / "pagemap-1.img", 1, [(a, 1, pack.PE_PRESENT) for a in addrs])
    (d / "pages-1.img").write_bytes(b"".join(pages[a] for a in addrs))
    (d / "core-1.img").write_bytes(b"core")


def test_the_final_split_and_rebuild_send_only_what_the_destination_lacks(tmp_path: Path) -> None:
    old = {0x1000 * i: bytes([i]) * PAGE for i in range(1, 9)}
    with pack.PackWriter(tmp_path / "pass-1", PAGE) as w:  # what a pass sent
        for a, data in old.items():
            w.add(1, a, data)
    now = {**old, 0x3000: b"x" * PAGE, 0x20000: b"y" * PAGE}  # one rewritten, one new
    images(tmp_path / "final", now)
    clean = {1: set(old) - {0x3000}}
    split = pack.split_final(tmp_path / "final", clean, tmp_path / "out")
    assert (split.pages_total, split.pages_sent) == (9, 2)
    assert not (tmp_path / "out" / "pages-1.img").exists()
    pack.build_final(tmp_path / "out", [tmp_path / "pass-1"], tmp_path / "target")
    for name in ("pages-1.img", "pagemap-1.img", "core-1.img"):
        assert (tmp_path / "target" / name).read_bytes() == (tmp_path / "final" / name).read_bytes()


def test_a_page_the_tracker_missed_is_caught_before_restore(tmp_path: Path) -> None:
    old = {0x1000: b"a" * PAGE, 0x2000: b"b" * PAGE}
    with pack.PackWriter(tmp_path / "pass-1", PAGE) as w:
        for a, data in old.items():
            w.add(1, a, data)
    images(tmp_path / "final", {**old, 0x2000: b"c" * PAGE})  # written, but called clean
    pack.split_final(tmp_path / "final", {1: set(old)}, tmp_path / "out")
    with pytest.raises(IntegrityError, match="does not match"):
        pack.build_final(tmp_path / "out", [tmp_path / "pass-1"], tmp_path / "target")
    assert not (tmp_path / "target").exists()
    pack.split_final(tmp_path / "final", {}, tmp_path / "out2")  # nothing known: all sent
    pack.build_final(tmp_path / "out2", [], tmp_path / "target")
    assert (tmp_path / "target" / "pages-1.img").read_bytes() == b"a" * PAGE + b"c" * PAGE


def test_a_page_that_never_arrived_is_named(tmp_path: Path) -> None:
    images(tmp_path / "final", {0x1000: b"a" * PAGE})
    pack.split_final(tmp_path / "final", {1: {0x1000}}, tmp_path / "out")  # "sent", never was
    with pytest.raises(IntegrityError, match="0x1000 never arrived"):
        pack.build_final(tmp_path / "out", [], tmp_path / "target")


@pytest.mark.parametrize(
    ("lo", "hi", "covered", "gaps"),
    [
        (0, 10, [], [(0, 10)]),
        (0, 10, [(0, 10)], []),
        (0, 10, [(2, 4), (6, 8)], [(0, 2), (4, 6), (8, 10)]),
        (5, 10, [(0, 7)], [(7, 10)]),
    ],
)
def test_gaps(
    lo: int, hi: int, covered: list[tuple[int, int]], gaps: list[tuple[int, int]]
) -> None:
    assert _gaps(lo, hi, covered) == gaps


def test_merge_joins_runs_that_touch() -> None:
    assert _merge([(8, 9), (0, 2), (2, 4), (3, 5)]) == [(0, 5), (8, 9)]
