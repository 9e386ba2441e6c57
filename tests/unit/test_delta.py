"""Delta pre-copy on synthetic image dirs: round trips, what ships whole, what is refused."""

from __future__ import annotations

import json
import os
import random
import shutil
import struct
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from workers.dataplane.delta import MANIFEST, SUFFIX, apply_delta, make_delta
from workers.errors import BadRequest, IntegrityError

B = 4096


def pagemap(pages_id: int, entries: bytes = b"\x0c\x00\x00\x00entries") -> bytes:
    """A pagemap image: two magics, the head message (pages_id, field 1), then entries."""
    return struct.pack("<IIIBB", 0x54564319, 0x56084025, 2, 0x08, pages_id) + entries


def images(d: Path, pages: dict[str, bytes], maps: dict[str, bytes] | None = None) -> Path:
    """An image dir: the given pages and pagemap images, a few small images, a CRIU log."""
    d.mkdir(parents=True)
    for name, data in {**pages, **(maps or {"pagemap-1.img": pagemap(1)})}.items():
        (d / name).write_bytes(data)
    (d / "core-1.img").write_bytes(os.urandom(2800))
    (d / "inventory.img").write_bytes(b"inventory")
    (d / "dump.log").write_text("not an image\n")
    return d


def dirty(data: bytes, share: float, rng: random.Random) -> tuple[bytes, int]:
    """``data`` with ``share`` of its blocks changed; and how many blocks changed."""
    out = bytearray(data)
    picked = rng.sample(range(len(data) // B), int(len(data) // B * share))
    for i in picked:
        out[i * B + rng.randrange(B)] ^= 0x5A
    return bytes(out), len(picked)


def same_files(a: Path, b: Path) -> None:
    names = sorted(p.name for p in a.iterdir() if not p.name.endswith(".log"))
    assert names == sorted(p.name for p in b.iterdir())
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def manifest(out: Path) -> dict[str, str]:
    """Each file's shipping, from the manifest."""
    doc = json.loads((out / MANIFEST).read_text())
    return {f["name"]: f["ship"] for f in doc["files"]}


def test_round_trip_ships_only_the_changed_blocks(tmp_path: Path) -> None:
    rng = random.Random(1)
    old = rng.randbytes(4 << 20)
    new, n = dirty(old, 0.05, rng)
    prev = images(tmp_path / "d1", {"pages-1.img": old})
    cur = images(tmp_path / "d2", {"pages-1.img": new})
    stats = make_delta(prev, cur, tmp_path / "out")
    assert manifest(tmp_path / "out") == {
        "core-1.img": "whole",
        "inventory.img": "whole",
        "pagemap-1.img": "whole",
        "pages-1.img": "delta",
    }
    assert (stats.files_whole, stats.files_delta) == (3, 1)
    assert (stats.blocks_changed, stats.blocks_total) == (n, 1024)
    assert stats.bytes_total == sum(p.stat().st_size for p in cur.iterdir()) - 13
    assert stats.bytes_out == sum(p.stat().st_size for p in (tmp_path / "out").iterdir())
    apply_delta(prev, tmp_path / "out", tmp_path / "target")
    same_files(cur, tmp_path / "target")


@pytest.mark.parametrize("change", ["pagemap", "size"])
def test_a_changed_memory_map_ships_the_pages_whole(tmp_path: Path, change: str) -> None:
    old = os.urandom(64 * B)
    prev = images(tmp_path / "d1", {"pages-1.img": old})
    if change == "pagemap":
        cur = images(tmp_path / "d2", {"pages-1.img": old}, {"pagemap-1.img": pagemap(1, b"x")})
    else:
        cur = images(tmp_path / "d2", {"pages-1.img": old + os.urandom(B)})
    stats = make_delta(prev, cur, tmp_path / "out")
    assert manifest(tmp_path / "out")["pages-1.img"] == "whole"
    assert stats.files_delta == 0
    apply_delta(prev, tmp_path / "out", tmp_path / "target")
    same_files(cur, tmp_path / "target")


def test_pages_follow_their_own_pagemap(tmp_path: Path) -> None:
    """pagemap-7 indexes pages-2: only the pages image whose map changed ships whole."""
    p1, p2 = os.urandom(16 * B), os.urandom(16 * B)
    prev = images(
        tmp_path / "d1",
        {"pages-1.img": p1, "pages-2.img": p2},
        {"pagemap-1.img": pagemap(1), "pagemap-7.img": pagemap(2)},
    )
    cur = images(
        tmp_path / "d2",
        {"pages-1.img": p1, "pages-2.img": p2},
        {"pagemap-1.img": pagemap(1), "pagemap-7.img": pagemap(2, b"grown")},
    )
    make_delta(prev, cur, tmp_path / "out")
    ships = manifest(tmp_path / "out")
    assert (ships["pages-1.img"], ships["pages-2.img"]) == ("delta", "whole")


def test_an_unreadable_pagemap_ships_every_pages_image_whole(tmp_path: Path) -> None:
    pages = {"pages-1.img": os.urandom(8 * B)}
    prev = images(tmp_path / "d1", pages, {"pagemap-1.img": pagemap(1), "pagemap-2.img": b"?"})
    cur = images(tmp_path / "d2", pages, {"pagemap-1.img": pagemap(1), "pagemap-2.img": b"?"})
    make_delta(prev, cur, tmp_path / "out")
    assert manifest(tmp_path / "out")["pages-1.img"] == "whole"


@pytest.mark.parametrize("first", [None, "absent"])
def test_the_first_pass_ships_everything_whole(tmp_path: Path, first: str | None) -> None:
    cur = images(tmp_path / "d2", {"pages-1.img": os.urandom(32 * B)})
    prev = None if first is None else tmp_path / "nothing-here"
    stats = make_delta(prev, cur, tmp_path / "out")
    assert set(manifest(tmp_path / "out").values()) == {"whole"}
    # Every page goes whole, so every page counts as changed (the stop rule's pass 1).
    assert (stats.files_delta, stats.blocks_changed, stats.blocks_total) == (0, 32, 32)
    apply_delta(None, tmp_path / "out", tmp_path / "target")
    same_files(cur, tmp_path / "target")


@pytest.mark.parametrize("share", [0.01, 0.10])
def test_bytes_out_is_the_changed_blocks_and_little_more(tmp_path: Path, share: float) -> None:
    rng = random.Random(2)
    old = rng.randbytes(64 << 20)
    new, n = dirty(old, share, rng)
    prev = images(tmp_path / "d1", {"pages-1.img": old})
    cur = images(tmp_path / "d2", {"pages-1.img": new})
    stats = make_delta(prev, cur, tmp_path / "out")
    assert stats.blocks_changed == n
    assert stats.bytes_out <= 1.3 * n * B
    delta = (tmp_path / "out" / ("pages-1.img" + SUFFIX)).stat().st_size
    assert delta <= n * B * 1.01


def _delta_pass(tmp_path: Path) -> tuple[Path, Path]:
    """A previous pass and the delta that turns it into a dirtied one."""
    rng = random.Random(3)
    old = rng.randbytes(256 * B)
    prev = images(tmp_path / "d1", {"pages-1.img": old})
    cur = images(tmp_path / "d2", {"pages-1.img": dirty(old, 0.2, rng)[0]})
    make_delta(prev, cur, tmp_path / "out")
    return prev, tmp_path / "out"


def _no_target(tmp_path: Path) -> None:
    assert not (tmp_path / "target").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".ferry-")]


def test_a_corrupted_block_is_detected_and_nothing_is_built(tmp_path: Path) -> None:
    prev, out = _delta_pass(tmp_path)
    delta = out / ("pages-1.img" + SUFFIX)
    data = bytearray(delta.read_bytes())
    data[-100] ^= 1  # in the last run's bytes
    delta.write_bytes(data)
    with pytest.raises(IntegrityError, match="pages-1.img"):
        apply_delta(prev, out, tmp_path / "target")
    _no_target(tmp_path)


def test_the_base_is_patched_in_place_and_becomes_the_target(tmp_path: Path) -> None:
    prev, out = _delta_pass(tmp_path)
    inode = (prev / "pages-1.img").stat().st_ino
    apply_delta(prev, out, tmp_path / "target")
    same_files(tmp_path / "d2", tmp_path / "target")
    assert not prev.exists()
    assert (tmp_path / "target" / "pages-1.img").stat().st_ino == inode  # no copy was made


def test_a_rebuild_run_again_on_a_half_patched_base_builds_the_right_files(tmp_path: Path) -> None:
    """A worker that died mid-patch: the redelivered rebuild repeats it and gets it right."""
    prev, out = _delta_pass(tmp_path)
    delta = out / ("pages-1.img" + SUFFIX)
    good = delta.read_bytes()
    bad = bytearray(good)
    bad[-100] ^= 1
    delta.write_bytes(bad)
    with pytest.raises(IntegrityError):
        apply_delta(prev, out, tmp_path / "target")  # patched the base, then failed its check
    _no_target(tmp_path)
    delta.write_bytes(good)
    apply_delta(prev, out, tmp_path / "target")
    same_files(tmp_path / "d2", tmp_path / "target")


def test_a_base_that_is_not_the_previous_pass_is_detected(tmp_path: Path) -> None:
    prev, out = _delta_pass(tmp_path)
    with pytest.raises(IntegrityError):
        apply_delta(None, out, tmp_path / "target")
    (prev / "pages-1.img").write_bytes(os.urandom(256 * B))
    with pytest.raises(IntegrityError):
        apply_delta(prev, out, tmp_path / "target")
    _no_target(tmp_path)


def _rewrite(
    delta: Path,
    runs: list[tuple[int, int]],
    magic: bytes = b"FERRYDLT",
    count: int | None = None,
    tail: bytes = b"",
) -> None:
    """Give ``delta`` these runs (first block, count) of zeros, keeping the rest of its header."""
    head = bytearray(delta.read_bytes()[:96])
    struct.pack_into("<8s", head, 0, magic)
    struct.pack_into("<Q", head, 24, len(runs) if count is None else count)
    body = b"".join(struct.pack("<QI", first, n) + bytes(n * B) for first, n in runs)
    delta.write_bytes(bytes(head) + body + tail)


@pytest.mark.parametrize(
    "runs, header, why",
    [
        ([(256, 1)], {}, "out of range"),
        ([(250, 10)], {}, "out of range"),
        ([(5, 2), (6, 1)], {}, "out of range or order"),
        ([(3, 0)], {}, "out of range"),
        ([(1, 1)], {"count": 2}, "truncated"),
        ([(1, 1)], {"tail": b"more"}, "after its last run"),
        ([(1, 1)], {"magic": b"RSYNCDLT"}, "not a ferry delta"),
    ],
)
def test_a_malformed_delta_is_refused(
    tmp_path: Path, runs: list[tuple[int, int]], header: dict[str, object], why: str
) -> None:
    prev, out = _delta_pass(tmp_path)
    _rewrite(out / ("pages-1.img" + SUFFIX), runs, **header)  # type: ignore[arg-type]
    with pytest.raises(BadRequest, match=why):
        apply_delta(prev, out, tmp_path / "target")
    _no_target(tmp_path)


@pytest.mark.parametrize(
    "name",
    [
        "../core-1.img",
        "a/b.img",
        "..",
        "/etc/passwd",
        "x..img",
        "",
        MANIFEST,
        "pages-1.img.delta",
        "ca\x00t",
    ],
)
def test_a_bad_name_in_the_manifest_is_refused(tmp_path: Path, name: str) -> None:
    prev, out = _delta_pass(tmp_path)
    doc = json.loads((out / MANIFEST).read_text())
    doc["files"][0]["name"] = name
    (out / MANIFEST).write_text(json.dumps(doc))
    with pytest.raises(BadRequest):
        apply_delta(prev, out, tmp_path / "target")
    _no_target(tmp_path)


@pytest.mark.parametrize(
    "edit",
    [
        lambda d: d.update(version=2),
        lambda d: d.update(block=0),
        lambda d: d.pop("files"),
        lambda d: d["files"][0].update(size=-1),
        lambda d: d["files"][0].update(ship="rsync"),
        lambda d: d["files"][0].update(blake3="00"),
        lambda d: d["files"].append(d["files"][0]),
    ],
)
def test_a_malformed_manifest_is_refused(tmp_path: Path, edit: object) -> None:
    prev, out = _delta_pass(tmp_path)
    doc = json.loads((out / MANIFEST).read_text())
    edit(doc)  # type: ignore[operator]
    (out / MANIFEST).write_text(json.dumps(doc))
    with pytest.raises(BadRequest):
        apply_delta(prev, out, tmp_path / "target")


def test_out_and_target_must_be_empty(tmp_path: Path) -> None:
    prev, out = _delta_pass(tmp_path)
    with pytest.raises(BadRequest, match="not empty"):
        make_delta(prev, prev, out)
    with pytest.raises(BadRequest, match="not empty"):
        apply_delta(prev, out, prev)
    (tmp_path / "empty").mkdir()
    apply_delta(prev, out, tmp_path / "empty")


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    size=st.integers(1, 40 * 4096 + 511),
    block=st.sampled_from([512, 4096]),
    share=st.floats(0, 1),
    seed=st.integers(0, 2**32),
)
def test_apply_after_make_rebuilds_cur(
    tmp_path: Path, size: int, block: int, share: float, seed: int
) -> None:
    """Any size (a short last block too), any share of blocks changed: the target is cur."""
    rng = random.Random(seed)
    work = Path(tempfile.mkdtemp(dir=tmp_path))
    old = rng.randbytes(size)
    new = bytearray(old)
    for start in range(0, size, block):
        if rng.random() < share:
            new[rng.randrange(start, min(start + block, size))] ^= 0xFF
    prev = images(work / "d1", {"pages-1.img": old})
    cur = images(work / "d2", {"pages-1.img": bytes(new)})
    stats = make_delta(prev, cur, work / "out", block=block)
    assert stats.blocks_total == -(-size // block)
    apply_delta(prev, work / "out", work / "target")
    same_files(cur, work / "target")
    shutil.rmtree(work)
