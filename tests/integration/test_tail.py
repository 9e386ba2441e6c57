"""A file sent while it is written (workers.dataplane.tail), then the put that finds it landed."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from tests.integration.test_transfer import MB, Raw, digest, fresh, serve, server
from workers.dataplane import wire
from workers.dataplane.tail import Tail
from workers.dataplane.transfer import TokenBucket, TransferServer, send_files
from workers.errors import IntegrityError

__all__ = ["serve", "server"]  # the fixtures, used by name


def writer(path: Path, pieces: list[bytes], gap_s: float = 0.01) -> threading.Thread:
    """Append ``pieces`` to ``path`` one by one, as CRIU writes its pages image."""

    def write() -> None:
        with path.open("wb") as f:
            for piece in pieces:
                f.write(piece)
                f.flush()
                time.sleep(gap_s)

    return threading.Thread(target=write)


def tail_of(server: TransferServer, src: Path, migration: str = "m1") -> Tail:
    return Tail(
        server.address, fresh(migration), migration, "final", src, lambda n: n.startswith("pages-")
    )


def test_a_growing_file_lands_and_the_put_skips_it(server: TransferServer, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    pieces = [os.urandom(3 * MB + 17) for _ in range(6)]
    tail = tail_of(server, src)
    tail.start()
    w = writer(src / "pages-1.img", pieces)
    w.start()
    w.join()
    (src / "core-1.img").write_bytes(b"core")
    assert tail.written() == "pages-1.img"
    stats = tail.finish()
    assert stats is not None and stats.name == "pages-1.img"
    assert stats.bytes == sum(map(len, pieces))
    landed = tmp_path / "dst" / "m1" / "final" / "pages-1.img"
    assert digest(landed) == digest(src / "pages-1.img")
    files = [(p, p.name) for p in sorted(src.iterdir())]
    sent = send_files(server.address, fresh(), "m1", files, subdir="final")
    assert sent.bytes == 4  # only core-1.img: the pages image was in place
    assert (tmp_path / "dst" / "m1" / "final" / "core-1.img").read_bytes() == b"core"


def test_a_byte_changed_after_it_went_out_is_caught(server: TransferServer, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    pages = src / "pages-1.img"
    tail = tail_of(server, src)
    tail.start()
    writer(pages, [os.urandom(2 * MB) for _ in range(3)]).run()
    time.sleep(0.1)  # the tail has sent it all
    with pages.open("r+b") as f:  # a writer that goes back: the digest is of the final file
        f.write(b"\0" * 4096)
    assert tail.written() == "pages-1.img" and tail.finish() is None
    landed = tmp_path / "dst" / "m1" / "final" / "pages-1.img"
    assert not landed.exists()
    sent = send_files(server.address, fresh(), "m1", [(pages, pages.name)], subdir="final")
    assert sent.bytes == 6 * MB and digest(landed) == digest(pages)


def test_no_file_no_connection(server: TransferServer, tmp_path: Path) -> None:
    tail = tail_of(server, tmp_path)  # a runtime that writes no pages image (sim)
    tail.start()
    assert tail.written() is None and tail.finish() is None
    assert not (tmp_path / "dst" / "m1").exists()


def test_a_cancelled_tail_lands_nothing(server: TransferServer, tmp_path: Path) -> None:
    (tmp_path / "pages-1.img").write_bytes(os.urandom(MB))
    tail = tail_of(server, tmp_path)
    tail.start()
    time.sleep(0.1)
    tail.cancel()
    assert not (tmp_path / "dst" / "m1" / "final" / "pages-1.img").exists()


def test_a_tail_needs_a_token_and_a_good_name(server: TransferServer, tmp_path: Path) -> None:
    bad = Raw(server.address)
    wire.send_frame(bad.sock, wire.TailRequest("nope", "m1", "final", "pages-1.img").message())
    assert bad.reply()["error"] == "TokenError"
    bad.close()
    up = Raw(server.address)
    wire.send_frame(up.sock, wire.TailRequest(fresh()(), "m1", "final", "../x").message())
    assert up.reply()["error"] == "BadRequest"
    up.close()
    assert not (tmp_path / "dst" / "x").exists()


def test_a_lying_end_is_refused(server: TransferServer, tmp_path: Path) -> None:
    raw = Raw(server.address)
    wire.send_frame(raw.sock, wire.TailRequest(fresh()(), "m1", "final", "pages-1.img").message())
    assert raw.reply()["type"] == "ready"
    wire.send_frame(raw.sock, {"type": "more", "size": 5})
    raw.sock.sendall(b"hello")
    wire.send_frame(raw.sock, {"type": "end", "blake3": "0" * 64, "size": 5, "version": "v"})
    assert raw.reply()["error"] == "IntegrityError"
    raw.close()
    assert not (tmp_path / "dst" / "m1" / "final" / "pages-1.img").exists()


def test_a_cut_tail_is_continued_by_the_put(server: TransferServer, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    pages = src / "pages-1.img"
    pages.write_bytes(os.urandom(3 * MB))
    cut = Raw(server.address)  # a tail cut after its first run, as a reset link would
    wire.send_frame(cut.sock, wire.TailRequest(fresh()(), "m1", "final", pages.name).message())
    assert cut.reply()["type"] == "ready"
    wire.send_frame(cut.sock, {"type": "more", "size": 2 * MB})
    cut.sock.sendall(pages.read_bytes()[: 2 * MB])
    cut.close()
    time.sleep(0.2)
    sent = send_files(server.address, fresh(), "m1", [(pages, pages.name)], subdir="final")
    assert sent.bytes == MB  # on from the tail's 2 MiB
    assert digest(tmp_path / "dst" / "m1" / "final" / pages.name) == digest(pages)


def test_a_cut_tail_of_other_bytes_is_caught_by_the_put(
    server: TransferServer, tmp_path: Path
) -> None:
    pages = tmp_path / "pages-1.img"
    pages.write_bytes(os.urandom(3 * MB))
    cut = Raw(server.address)
    wire.send_frame(cut.sock, wire.TailRequest(fresh()(), "m1", "final", pages.name).message())
    assert cut.reply()["type"] == "ready"
    wire.send_frame(cut.sock, {"type": "more", "size": MB})
    cut.sock.sendall(os.urandom(MB))  # not the file's bytes: CRIU rewrote them, say
    cut.close()
    time.sleep(0.2)
    with pytest.raises(IntegrityError):  # the digest of the whole file refuses them
        send_files(server.address, fresh(), "m1", [(pages, pages.name)], subdir="final")
    sent = send_files(server.address, fresh(), "m1", [(pages, pages.name)], subdir="final")
    assert sent.bytes == 3 * MB  # and the next put sends it all (tasks.node.dataplane.send_final)
    assert digest(tmp_path / "dst" / "m1" / "final" / pages.name) == digest(pages)


def test_a_capped_tail_keeps_to_its_rate(server: TransferServer, tmp_path: Path) -> None:
    pages = tmp_path / "pages-1.img"
    pages.write_bytes(os.urandom(2 * MB))
    tail = Tail(
        server.address,
        fresh(),
        "m1",
        "final",
        tmp_path,
        lambda n: n.startswith("pages-"),
        buckets=[TokenBucket(8 * MB)],
    )
    started = time.monotonic()
    tail.start()
    assert tail.written() == pages.name
    assert tail.finish() is not None
    assert time.monotonic() - started >= 0.2  # 2 MiB at 8 MiB/s, less the first burst
    assert digest(tmp_path / "dst" / "m1" / "final" / pages.name) == digest(pages)
