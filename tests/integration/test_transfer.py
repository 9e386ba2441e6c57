"""The data plane end to end: a real TransferServer on 127.0.0.1, real sockets and files."""

from __future__ import annotations

import os
import random
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import blake3
import pytest

from tasks.core.transport import Route, codec
from workers.dataplane import sender, transfer, wire
from workers.dataplane.tokens import issue_token
from workers.dataplane.transfer import SendStats, TokenBucket, TransferServer, send_files
from workers.errors import (
    BadRequest,
    IntegrityError,
    NoSpace,
    TokenError,
    TransferError,
)

SECRET = b"integration-secret-0123456789"
MB = 1 << 20

Serve = Callable[..., TransferServer]


def fresh(migration: str = "m1", dst: str = "pi2", secret: bytes = SECRET) -> Callable[[], str]:
    return lambda: issue_token(secret, migration, "pi1", dst, now=time.time())


def make_text(path: Path, size: int) -> Path:
    """A file of ``size`` compressible bytes: lines of a few thousand random words."""
    words = [os.urandom(4).hex() for _ in range(3000)]
    rng = random.Random(size)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        while size > 0:
            block = " ".join(rng.choices(words, k=200_000)).encode()[: min(size, 16 * MB)]
            f.write(block)
            size -= len(block)
    return path


def make(path: Path, size: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        while size > 0:
            block = os.urandom(min(size, 16 * MB))
            f.write(block)
            size -= len(block)
    return path


def digest(path: Path) -> str:
    hasher = blake3.blake3()
    hasher.update_mmap(path)
    return hasher.hexdigest()


def temps(root: Path) -> list[Path]:
    return sorted(root.rglob(".ferry-*.part"))


def eventually(check: Callable[[], bool], within: float = 5.0) -> bool:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Serve]:
    """Start servers on 127.0.0.1 (root defaults to tmp_path/dst); stop them after the test."""
    started: list[TransferServer] = []

    def start(root: Path | None = None, **options: Any) -> TransferServer:
        server = TransferServer(root or tmp_path / "dst", SECRET, "pi2", **options)
        server.start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def server(serve: Serve) -> TransferServer:
    return serve()


class Raw:
    """A hand-driven client, for what send_files never does on purpose."""

    def __init__(self, address: tuple[str, int], timeout: float = 10) -> None:
        self.sock = socket.create_connection(address, timeout=timeout)

    def put(
        self, token: str, files: list[tuple[str, int]], migration: str = "m1", codec: str = "none"
    ) -> dict[str, Any]:
        entries = tuple(wire.FileEntry(name, size, "v1", codec) for name, size in files)
        wire.send_frame(self.sock, wire.PutRequest(token, migration, "images", entries).message())
        return wire.recv_frame(self.sock)

    def reply(self) -> dict[str, Any]:
        return wire.recv_frame(self.sock)

    def close(self) -> None:
        self.sock.close()


# --- the happy path ---------------------------------------------------------------------


def test_round_trip_several_files(server: TransferServer, tmp_path: Path) -> None:
    src = tmp_path / "src"
    files = [
        (make(src / "pages-1.img", 64 * MB), "pages-1.img"),
        (make(src / "core", 12_345), "core-7.img"),
        (make(src / "empty", 0), "empty.img"),
        (make(src / "nested", 3 * MB + 1), "fs/root.tar"),
    ]
    seen: list[tuple[int, int]] = []
    stats = send_files(server.address, fresh(), "m1", files, progress=lambda *p: seen.append(p))
    total = sum(p.stat().st_size for p, _ in files)
    assert stats.bytes == total and stats.files == 4 and stats.resumed == 0
    assert seen[-1] == (total, total)
    dst = tmp_path / "dst" / "m1" / "images"
    for path, name in files:
        assert digest(dst / name) == digest(path)
    assert temps(tmp_path / "dst") == []
    # Sending the same files again is idempotent and moves no file bytes.
    again = send_files(server.address, fresh(), "m1", files)
    assert again == SendStats(0, 4, again.seconds, 0)


def test_fsync_option_lands_files(serve: Serve, tmp_path: Path) -> None:
    server = serve(fsync=True)
    src = make(tmp_path / "a", 3 * MB)
    send_files(server.address, fresh(), "m1", [(src, "a.img")])
    assert digest(tmp_path / "dst" / "m1" / "images" / "a.img") == digest(src)


# --- compression ------------------------------------------------------------------------

zstd = pytest.mark.skipif(not wire.HAVE_ZSTD, reason="zstandard is not installed")


@zstd
def test_compressed_round_trip(server: TransferServer, tmp_path: Path) -> None:
    src = tmp_path / "src"
    files = [
        (make_text(src / "text", 24 * MB + 5), "pages-1.img"),
        (make(src / "random", 3 * MB), "pages-2.img"),
        (make(src / "zeros", 0), "zeros.img"),
        (make_text(src / "small", 1000), "core.img"),  # under MIN_COMPRESS: sent as it is
    ]
    (src / "zeros").write_bytes(bytes(5 * MB))
    seen: list[tuple[int, int]] = []
    stats = send_files(
        server.address,
        fresh(),
        "m1",
        files,
        compression="zstd",
        progress=lambda *p: seen.append(p),
    )
    total = sum(p.stat().st_size for p, _ in files)
    assert stats.codec == "zstd" and stats.files == 4
    assert stats.bytes < total // 2  # the text and the zeros shrink
    assert seen[-1] == (total, total)
    dst = tmp_path / "dst" / "m1" / "images"
    for path, name in files:
        assert digest(dst / name) == digest(path)
    assert temps(tmp_path / "dst") == []


@zstd
def test_compression_beats_a_bandwidth_cap(server: TransferServer, tmp_path: Path) -> None:
    # the cap is on the wire: what crosses is the compressed bytes (how much faster that
    # is, is benchmarks/transfer.py's to say; timed here it failed on a loaded machine)
    src = make_text(tmp_path / "a", 30 * MB)
    stats = send_files(
        server.address, fresh(), "m1", [(src, "a.img")], bandwidth_bps=20e6, compression="zstd"
    )
    assert stats.codec == "zstd" and stats.bytes < 10 * MB  # text: well under a third
    assert digest(tmp_path / "dst" / "m1" / "images" / "a.img") == digest(src)


def test_auto_compression_stays_off_on_loopback(server: TransferServer, tmp_path: Path) -> None:
    src = make_text(tmp_path / "a", 4 * MB)
    ratio = transfer.sample_ratio([src])
    assert ratio < 0.5  # it would shrink: only loopback keeps it plain
    for host in ("127.0.0.1", "::1", "localhost"):
        way = Route(transfer.is_loopback(host), 12.5e6, transfer.compressor_bps())
        assert codec("auto", way, ratio) == "none"
    stats = send_files(server.address, fresh(), "m1", [(src, "a.img")], bandwidth_bps=50e6)
    assert stats.codec == "none" and stats.bytes == 4 * MB


@zstd
def test_auto_compression_on_a_slow_link_only_when_it_shrinks(tmp_path: Path) -> None:
    text, noise = make_text(tmp_path / "text", 4 * MB), make(tmp_path / "noise", 4 * MB)
    speed = transfer.compressor_bps()  # this CPU, measured
    pi_link = Route(transfer.is_loopback("10.77.0.12"), 12.5e6, speed)
    assert codec("auto", pi_link, transfer.sample_ratio([text])) == "zstd"
    assert codec("auto", pi_link, transfer.sample_ratio([noise])) == "none"
    assert codec("auto", Route(False, None, speed), transfer.sample_ratio([text])) == "none"


def _frames(data: bytes) -> bytes:
    return b"".join(
        len(f).to_bytes(4, "big") + f
        for f in (
            wire.compress(data[i : i + wire.CHUNK_PLAIN])
            for i in range(0, len(data), wire.CHUNK_PLAIN)
        )
    )


def _flip(stream: bytes) -> bytes:
    """Flip a byte in the middle of the first frame's body, never in a length prefix.

    A flipped length is another fault: a longer one leaves the receiver waiting
    for bytes the sender never sends (the stream's middle fell on the second
    frame's prefix in about one run in fifty).
    """
    middle = 4 + int.from_bytes(stream[:4], "big") // 2
    return stream[:middle] + bytes([stream[middle] ^ 0x55]) + stream[middle + 1 :]


@zstd
@pytest.mark.parametrize(
    "mangle",
    [
        lambda s: (10).to_bytes(4, "big") + b"not a zstd frame",  # garbage
        _flip,  # a flipped byte: bad frame, or good frame with other bytes
        lambda s: _frames(b"x" * (3 * MB)),  # frames of more bytes than the file has
        lambda s: (wire.MAX_CHUNK + 1).to_bytes(4, "big"),  # an absurd chunk length
    ],
    ids=["garbage", "flipped", "too-long", "huge-chunk"],
)
def test_corrupt_compressed_stream_refused(
    server: TransferServer, tmp_path: Path, mangle: Callable[[bytes], bytes]
) -> None:
    data = make_text(tmp_path / "a", 2 * MB + 7).read_bytes()
    raw = Raw(server.address)
    assert raw.put(fresh()(), [("a.img", len(data))], codec="zstd")["type"] == "ready"
    raw.sock.sendall(mangle(_frames(data)))
    wire.send_frame(raw.sock, {"type": "end", "blake3": blake3.blake3(data).hexdigest()})
    assert raw.reply()["error"] == "IntegrityError"
    raw.close()
    assert list((tmp_path / "dst" / "m1" / "images").iterdir()) == []
    assert eventually(lambda: temps(tmp_path / "dst") == [])


def test_unknown_codec_refused(server: TransferServer, tmp_path: Path) -> None:
    raw = Raw(server.address)
    reply = raw.put(fresh()(), [("a.img", 10)], codec="brotli")
    assert reply["error"] == "BadRequest" and "unknown codec" in reply["message"]
    raw.close()


# --- refused requests change nothing ----------------------------------------------------


@pytest.mark.parametrize(
    ("tokens", "message"),
    [
        (fresh(secret=b"not-the-cluster-secret"), "bad signature"),
        (fresh(dst="pi3"), "for node 'pi3'"),
        (fresh(migration="m2"), "for migration 'm2', not 'm1'"),
        (lambda: issue_token(SECRET, "m1", "pi1", "pi2", now=time.time() - 700), "expired"),
        (lambda: "garbage", "malformed"),
    ],
    ids=["wrong-secret", "wrong-dst", "wrong-migration", "expired", "malformed"],
)
def test_bad_token_refused_and_nothing_written(
    server: TransferServer, tmp_path: Path, tokens: Callable[[], str], message: str
) -> None:
    src = make(tmp_path / "a", 1000)
    with pytest.raises(TokenError, match=message):
        send_files(server.address, tokens, "m1", [(src, "a.img")])
    assert list((tmp_path / "dst").iterdir()) == []


def test_replayed_token_refused(server: TransferServer, tmp_path: Path) -> None:
    token = fresh()()
    send_files(server.address, lambda: token, "m1", [(make(tmp_path / "a", 10), "a.img")])
    with pytest.raises(TokenError, match="replayed"):
        send_files(server.address, lambda: token, "m1", [(make(tmp_path / "b", 10), "b.img")])
    assert sorted(p.name for p in (tmp_path / "dst" / "m1" / "images").iterdir()) == ["a.img"]


@pytest.mark.parametrize(
    "name",
    ["../x", "/etc/x", "a/../../x", "a/b/c", "", ".", "a/", "x\x00y", "a\\..\\x", ".ferry-1.part"],
)
def test_bad_name_refused_and_nothing_written(
    server: TransferServer, tmp_path: Path, name: str
) -> None:
    src = make(tmp_path / "src", 100)
    with pytest.raises(BadRequest, match="bad file name"):
        send_files(server.address, fresh(), "m1", [(src, "ok.img"), (src, name)])
    assert list((tmp_path / "dst").iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dst", "src"]


@pytest.mark.parametrize("migration", ["..", ".", "a/b", "", "x" * 65, "m1\n"])
def test_bad_migration_id_refused(server: TransferServer, tmp_path: Path, migration: str) -> None:
    src = make(tmp_path / "src", 100)
    with pytest.raises(BadRequest, match="bad migration id"):
        send_files(server.address, fresh(migration), migration, [(src, "a.img")])
    assert list((tmp_path / "dst").iterdir()) == []


@pytest.mark.parametrize(
    ("plant", "name"),
    [("images/a.img", "a.img"), ("images", "a.img"), ("images/sub", "sub/a.img"), ("", "a.img")],
    ids=["file", "subdir", "name-dir", "migration-dir"],
)
def test_planted_symlink_refused(
    server: TransferServer, tmp_path: Path, plant: str, name: str
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "a.img").write_text("precious")
    link = tmp_path / "dst" / "m1" / plant
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(outside / "a.img" if plant.endswith(".img") else outside)
    src = make(tmp_path / "src", 100)
    with pytest.raises(BadRequest, match="symlink"):
        send_files(server.address, fresh(), "m1", [(src, name)])
    assert [p.name for p in outside.iterdir()] == ["a.img"]
    assert (outside / "a.img").read_text() == "precious"


# --- broken transfers leave nothing in place --------------------------------------------


def test_truncated_stream_leaves_nothing_in_place(serve: Serve, tmp_path: Path) -> None:
    server = serve(resume_window_s=0.3)
    raw = Raw(server.address)
    assert raw.put(fresh()(), [("a.img", MB)]) == {"type": "ready", "have": [0], "done": [False]}
    raw.sock.sendall(b"x" * 300_000)
    raw.close()
    dst = tmp_path / "dst" / "m1" / "images"
    assert eventually(lambda: temps(tmp_path / "dst") == [])  # kept for a resume, then gone
    assert list(dst.iterdir()) == []


def test_stop_deletes_partials(server: TransferServer, tmp_path: Path) -> None:
    raw = Raw(server.address)
    raw.put(fresh()(), [("a.img", MB)])
    raw.sock.sendall(b"x" * 1000)
    raw.close()
    assert eventually(lambda: len(temps(tmp_path / "dst")) == 1)
    server.stop()
    assert temps(tmp_path / "dst") == []


def test_leftovers_of_an_earlier_server_are_deleted(serve: Serve, tmp_path: Path) -> None:
    leftover = tmp_path / "dst" / "m1" / "images" / ".ferry-0123.part"
    make(leftover, 10)
    serve()
    assert not leftover.exists()


def test_checksum_mismatch_refused(
    server: TransferServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sender, "_digest", lambda path: "0" * 64)
    src = make(tmp_path / "a", 5 * MB)
    with pytest.raises(IntegrityError, match="a.img: BLAKE3 digest does not match"):
        send_files(server.address, fresh(), "m1", [(src, "a.img")])
    assert list((tmp_path / "dst" / "m1" / "images").iterdir()) == []


def test_garbage_instead_of_digest_refused(server: TransferServer, tmp_path: Path) -> None:
    raw = Raw(server.address)
    raw.put(fresh()(), [("a.img", 10)])
    raw.sock.sendall(b"0123456789")
    wire.send_frame(raw.sock, {"type": "end", "blake3": "not hex"})
    assert raw.reply()["error"] == "BadRequest"
    raw.close()
    assert list((tmp_path / "dst" / "m1" / "images").iterdir()) == []


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("disk-full test mounts a 1 MiB tmpfs, which needs root")
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=True)


def test_disk_full_is_a_clean_error(serve: Serve, tmp_path: Path, tiny_disk: Path) -> None:
    server = serve(tiny_disk / "root")
    src = make(tmp_path / "big", 3 * MB)
    with pytest.raises(NoSpace, match="No space left on device"):
        send_files(server.address, fresh(), "m1", [(src, "pages-1.img")])
    assert list((tiny_disk / "root" / "m1" / "images").iterdir()) == []
    # The node keeps serving what fits.
    small = make(tmp_path / "small", 1000)
    send_files(server.address, fresh(), "m1", [(small, "core.img")])
    assert digest(tiny_disk / "root" / "m1" / "images" / "core.img") == digest(small)


def test_stalled_sender_dropped(serve: Serve, tmp_path: Path) -> None:
    server = serve(stall_timeout_s=0.5, resume_window_s=0.5)
    raw = Raw(server.address)
    raw.put(fresh()(), [("a.img", MB)])
    raw.sock.sendall(b"x" * 1000)
    started = time.monotonic()
    reply = raw.reply()
    assert 0.4 < time.monotonic() - started < 5
    assert reply["error"] == "TransferError" and "no data for 0.5 s" in reply["message"]
    assert raw.sock.recv(1) == b""  # closed
    raw.close()
    assert eventually(lambda: temps(tmp_path / "dst") == [])


# --- resume and throttling --------------------------------------------------------------


class CuttingProxy:
    """Forwards TCP to ``target``; cuts the first connection after ``cut`` client bytes.

    ``tell_server`` closes the server side too; otherwise that side stays open,
    as when a link dies without the receiver noticing.
    """

    def __init__(self, target: tuple[str, int], cut: int, tell_server: bool) -> None:
        self.target, self.cut, self.tell_server = target, cut, tell_server
        self.forwarded: list[int] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = self.listener.getsockname()[:2]
        self.held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            self.forwarded.append(0)
            index = len(self.forwarded) - 1
            threading.Thread(target=self._pump_back, args=(upstream, client), daemon=True).start()
            threading.Thread(target=self._pump, args=(client, upstream, index), daemon=True).start()

    def _pump(self, client: socket.socket, upstream: socket.socket, index: int) -> None:
        limit = self.cut if index == 0 else 1 << 62
        while data := client.recv(MB):
            data = data[: limit - self.forwarded[index]]
            upstream.sendall(data)
            self.forwarded[index] += len(data)
            if self.forwarded[index] >= limit:
                break
        client.close()
        if self.tell_server:
            upstream.close()
        else:
            self.held.append(upstream)

    @staticmethod
    def _pump_back(upstream: socket.socket, client: socket.socket) -> None:
        try:
            while data := upstream.recv(MB):
                client.sendall(data)
        except OSError:
            pass

    def close(self) -> None:
        self.listener.close()
        for s in self.held:
            s.close()


@pytest.mark.parametrize("codec", ["none", pytest.param("zstd", marks=zstd)])
@pytest.mark.parametrize("tell_server", [True, False], ids=["server-sees-drop", "silent-drop"])
def test_dropped_connection_resumes(
    server: TransferServer, tmp_path: Path, tell_server: bool, codec: str
) -> None:
    size = 32 * MB
    files = [(make(tmp_path / "small", 1000), "core.img"), (make(tmp_path / "big", size), "p.img")]
    proxy = CuttingProxy(server.address, cut=size // 2, tell_server=tell_server)
    try:
        started = time.monotonic()
        stats = send_files(proxy.address, fresh(), "m1", files, timeout_s=5, compression=codec)
    finally:
        proxy.close()
    assert time.monotonic() - started < 10  # a silent drop is cut off, not waited out
    assert stats.resumed == 1 and len(proxy.forwarded) == 2
    assert proxy.forwarded[1] < size * 3 // 4  # the second connection sent only the rest
    dst = tmp_path / "dst" / "m1" / "images"
    assert digest(dst / "p.img") == digest(tmp_path / "big")
    assert digest(dst / "core.img") == digest(tmp_path / "small")
    assert temps(tmp_path / "dst") == []


def test_bandwidth_limit(server: TransferServer, tmp_path: Path) -> None:
    src = make(tmp_path / "a", 10_000_000)
    stats = send_files(server.address, fresh(), "m1", [(src, "a.img")], bandwidth_bps=20e6)
    assert 0.4 <= stats.seconds < 2


def test_shared_bucket_limits_transfers_together(server: TransferServer, tmp_path: Path) -> None:
    node_budget = TokenBucket(20e6)
    srcs = [make(tmp_path / f"f{i}", 5_000_000) for i in range(2)]
    started = time.monotonic()
    threads = [
        threading.Thread(
            target=send_files,
            args=(server.address, fresh(), "m1", [(src, src.name)]),
            kwargs={"bucket": node_budget},
        )
        for src in srcs
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert time.monotonic() - started >= 0.4
    assert len(list((tmp_path / "dst" / "m1" / "images").iterdir())) == 2


def test_too_many_transfers_turned_away_but_idle_connections_take_no_slot(
    serve: Serve, tmp_path: Path
) -> None:
    server = serve(limits=transfer.GateLimits(max_sessions=1))
    idle = Raw(server.address)  # no token: waits in the pending pool, holds no session
    holder = Raw(server.address)  # authenticated: holds the only session, sends nothing
    assert holder.put(fresh()(), [("a.img", 100)])["type"] == "ready"
    extra = Raw(server.address)
    reply = extra.put(fresh()(), [("b.img", 100)])
    assert reply["error"] == "TransferError" and "busy" in reply["message"]
    assert server.refusals()["busy"] == 1
    extra.close()
    holder.close()
    idle.close()
    src = make(tmp_path / "a", 100)
    send_files(server.address, fresh(), "m1", [(src, "a.img")])


def test_nobody_listening_is_transient() -> None:
    with socket.create_server(("127.0.0.1", 0)) as s:
        address = s.getsockname()[:2]
    with pytest.raises(TransferError, match="failed 2 times"):
        send_files(address, fresh(), "m1", [], retries=1)
