"""The pages stream: real CRIU dumps into a real TransferServer's page server, behind its token."""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tasks.api.localcluster import ROOT
from tests.conftest import criu_works, need
from tests.integration.helpers import assert_went_on, ticks, wait_for
from workers import procs
from workers.criu.adapter import Criu
from workers.dataplane.pagestream import MARKER, Relay, check_pages
from workers.dataplane.tokens import issue_token
from workers.dataplane.transfer import TransferServer, send_files
from workers.errors import (
    CriuError,
    IntegrityError,
    NoSpace,
    PermanentError,
    TokenError,
    TransferError,
)
from workers.records import PagesTarget

pytestmark = pytest.mark.criu

SECRET = b"integration-secret-0123456789"
TICKER = """\
import time
hold = bytearray(b"\\xa5") * (int(__import__("sys").argv[1]) << 20)
i = 0
while True:
    print("tick", i, flush=True)
    i += 1
    time.sleep(0.05)
"""


def fresh(migration: str = "m1", now: Callable[[], float] = time.time) -> Callable[[], str]:
    return lambda: issue_token(SECRET, migration, "pi1", "pi2", now=now())


@pytest.fixture
def server(tmp_path: Path) -> Iterator[TransferServer]:
    ok, why = criu_works()
    need(ok, why)
    s = TransferServer(tmp_path / "dst", SECRET, "pi2", page_server=Criu().page_server)
    s.start()
    yield s
    s.stop()


def start_ticker(tmp_path: Path, mib: int = 32) -> tuple[int, Path]:
    box = tmp_path / "box"
    box.mkdir()
    argv = [
        sys.executable,
        "-m",
        "workers.runtimes.launch",
        "--name",
        "ticker",
        "--dir",
        str(box),
        "--log",
        str(box / "log"),
        "--",
        sys.executable,
        "-u",
        "-c",
        TICKER,
        str(mib),
    ]
    done = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, timeout=30)
    assert done.returncode == 0, done.stderr
    wait_for(lambda: len(ticks(box / "log")) >= 3, timeout=30)
    return int(done.stdout), box / "log"


@pytest.fixture
def ticker(tmp_path: Path) -> Iterator[tuple[int, Path, list[int]]]:
    """A container holding 32 MiB that ticks; its pid, its log, and pids to kill at the end."""
    ok, why = criu_works()
    need(ok, why)
    pid, log = start_ticker(tmp_path)
    pids = [pid]
    yield pid, log, pids
    for p in pids:
        procs.kill_and_wait(p)


def dump(
    server: TransferServer, pid: int, images: Path, token: Callable[[], str], **options: object
) -> Relay:
    """Dump ``pid`` through a pages session, leaving the tree stopped; the relay, for its stats."""
    relay = Relay(PagesTarget(server.address, token, "m1", "final", **options))  # type: ignore[arg-type]
    with relay as fd:
        Criu().dump(pid, images, leave_stopped=True, ps_socket=fd)
    return relay


def test_pages_stream_dump_restores_where_it_stopped(
    server: TransferServer, tmp_path: Path, ticker: tuple[int, Path, list[int]]
) -> None:
    pid, log, pids = ticker
    images, landed = tmp_path / "src", tmp_path / "dst" / "m1" / "final"
    relay = dump(server, pid, images, fresh())
    assert relay.stats is not None and relay.stats.bytes > 32 << 20
    procs.kill_and_wait(pid)
    before = max(ticks(log))
    # The pages went straight to the destination, and both ends agree on them.
    assert not list(images.glob("pages-*.img")) and list(landed.glob("pages-*.img"))
    check_pages(relay.stats.to_dict(), landed)
    rest = [(p, p.name) for p in images.iterdir() if p.suffix == ".img"]
    send_files(server.address, fresh(), "m1", rest, subdir="final")
    pids.append(Criu().restore(landed).pid)
    wait_for(lambda: max(ticks(log)) > before + 3)
    assert_went_on(ticks(log), before)


def test_the_bandwidth_cap_holds_and_progress_is_told(
    server: TransferServer, tmp_path: Path, ticker: tuple[int, Path, list[int]]
) -> None:
    pid, _, _ = ticker
    told: list[tuple[int, float]] = []
    relay = dump(
        server,
        pid,
        tmp_path / "src",
        fresh(),
        bandwidth_bps=16e6,
        progress=lambda sent, seconds: told.append((sent, seconds)),
    )
    assert relay.stats is not None
    assert relay.stats.seconds >= relay.stats.bytes / 16e6 * 0.9  # ~2 s for 33 MB
    assert len(told) >= 4 and [t[0] for t in told] == sorted(t[0] for t in told)
    assert told[-1][0] <= relay.stats.bytes and told[-1][0] / told[-1][1] < 16e6 * 1.2


def test_a_chunk_waiting_on_a_low_cap_is_not_a_stall(
    server: TransferServer, tmp_path: Path
) -> None:
    pid, _ = start_ticker(tmp_path, mib=1)
    try:  # a chunk (~200 KiB from the socketpair) waits ~0.2 s for the cap: longer than the stall limit
        relay = dump(server, pid, tmp_path / "src", fresh(), bandwidth_bps=1e6, stall_s=0.15)
        assert relay.stats is not None and relay.stats.seconds > 1
        check_pages(relay.stats.to_dict(), tmp_path / "dst" / "m1" / "final")
    finally:
        procs.kill_and_wait(pid)


@pytest.mark.parametrize(
    ("token", "message"),
    [
        (
            lambda: issue_token(b"another-secret-0123456789", "m1", "pi1", "pi2", now=time.time()),
            "bad signature",
        ),
        (lambda: issue_token(SECRET, "m2", "pi1", "pi2", now=time.time()), "not 'm1'"),
        (lambda: issue_token(SECRET, "m1", "pi1", "pi2", now=time.time() - 700), "expired"),
    ],
    ids=["wrong-secret", "wrong-migration", "expired"],
)
def test_a_bad_token_is_refused_before_criu_runs(
    server: TransferServer, tmp_path: Path, token: Callable[[], str], message: str
) -> None:
    with pytest.raises(TokenError, match=message):
        Relay(PagesTarget(server.address, token, "m1", "final")).__enter__()
    assert list((tmp_path / "dst").iterdir()) == []
    assert not _page_servers(tmp_path)


def test_a_replayed_token_is_refused(
    server: TransferServer, tmp_path: Path, ticker: tuple[int, Path, list[int]]
) -> None:
    pid, _, _ = ticker
    token = fresh()()
    dump(server, pid, tmp_path / "src", lambda: token)
    landed = tmp_path / "dst" / "m1" / "final"
    wait_for(lambda: (landed / MARKER).exists())
    first = {p.name: p.stat().st_mtime_ns for p in landed.iterdir()}
    with pytest.raises(TokenError, match="replayed"):
        Relay(PagesTarget(server.address, lambda: token, "m1", "final")).__enter__()
    assert {p.name: p.stat().st_mtime_ns for p in landed.iterdir()} == first


def test_a_flipped_byte_fails_the_dump_and_the_images_are_refused(
    server: TransferServer, tmp_path: Path, ticker: tuple[int, Path, list[int]]
) -> None:
    pid, _, _ = ticker
    relay = Relay(PagesTarget(server.address, fresh(), "m1", "final", corrupt=True))
    with pytest.raises(IntegrityError, match="digest does not match"), relay as fd:
        Criu().dump(pid, tmp_path / "src", leave_stopped=True, ps_socket=fd)
    assert relay.stats is not None
    # and were the dump taken anyway, the restore would refuse what landed
    with pytest.raises(IntegrityError, match="digest does not match"):
        check_pages(relay.stats.to_dict(), tmp_path / "dst" / "m1" / "final")


def test_no_marker_no_restore(tmp_path: Path) -> None:
    with pytest.raises(IntegrityError, match="never finished"):
        check_pages({"bytes": 1, "blake3": "0" * 64}, tmp_path, wait_s=0.05)


def test_the_page_server_dying_mid_dump_fails_it_and_the_tree_runs_on(
    server: TransferServer, tmp_path: Path
) -> None:
    pid, log = start_ticker(tmp_path, mib=256)
    try:
        killer = threading.Thread(target=_kill_page_server_when_busy, args=(tmp_path,), daemon=True)
        killer.start()
        # the cap keeps the dump going for ~10 s; the destination says why it failed
        with pytest.raises(PermanentError, match="page server exited with status -9") as err:
            dump(server, pid, tmp_path / "src", fresh(), bandwidth_bps=25e6)
        assert isinstance(err.value.__cause__, CriuError)  # what CRIU saw: a broken pipe
        killer.join()
        os.kill(pid, signal.SIGCONT)  # what the source's RESUME does after --leave-stopped
        before = max(ticks(log))
        wait_for(lambda: max(ticks(log)) > before)
        marker = json.loads((tmp_path / "dst" / "m1" / "final" / MARKER).read_text())
        assert marker["exit"] != 0
    finally:
        procs.kill_and_wait(pid)


def test_a_full_destination_disk_is_no_space_whatever_the_log_file_got(tmp_path: Path) -> None:
    """The page server's log is on the disk it fills: its reason must not depend on that file."""
    ok, why = criu_works()
    need(ok, why)
    need(os.geteuid() == 0, "mounting a tmpfs for the full disk needs root")
    dst = tmp_path / "dst"
    dst.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(dst)], check=True)
    try:
        filler = os.open(dst / "filler", os.O_WRONLY | os.O_CREAT)
        try:  # not a byte left, not even for the log
            while os.write(filler, b"\0" * 4096):
                pass
        except OSError as full:
            assert full.errno == errno.ENOSPC
        finally:
            os.close(filler)
        s = TransferServer(dst, SECRET, "pi2", page_server=Criu().page_server)
        s.start()
        pid, _ = start_ticker(tmp_path, mib=8)
        try:
            with pytest.raises(NoSpace, match="No space left"):
                dump(s, pid, tmp_path / "src", fresh())
        finally:
            procs.kill_and_wait(pid)
            s.stop()
    finally:
        subprocess.run(["umount", "-l", str(dst)], check=True)


def test_nobody_listening_is_a_transfer_error(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as s:
        address = s.getsockname()[:2]
    with pytest.raises(TransferError, match="does not answer"):
        Relay(PagesTarget(address, fresh(), "m1", "final", stall_s=1)).__enter__()


def _page_servers(where: Path) -> list[int]:
    """This test's page servers only: others may run on this machine."""
    out = subprocess.run(
        ["pgrep", "-f", f"criu page-server -D {where}/"], capture_output=True, text=True
    )
    return [int(p) for p in out.stdout.split()]


def _kill_page_server_when_busy(where: Path) -> None:
    pids = wait_for(lambda: _page_servers(where), timeout=20)
    time.sleep(1.0)  # deliberate: well into the pages before the kill
    for p in pids:
        os.kill(p, signal.SIGKILL)
