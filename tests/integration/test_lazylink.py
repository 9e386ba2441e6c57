"""Post-copy pages behind the token: a real lazy dump's page server listens on loopback
only, and a destination reaches it through the source's TransferServer or not at all."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import criu_works, need
from tests.integration.helpers import assert_went_on, ticks, wait_for
from tests.integration.test_pagestream import SECRET, start_ticker
from workers import procs
from workers.criu.adapter import Criu
from workers.criu.lazydump import wait_served
from workers.dataplane.lazylink import LOOPBACK, open_lazy
from workers.dataplane.tokens import issue_token
from workers.dataplane.transfer import TransferServer
from workers.errors import PermanentError, TokenError

pytestmark = pytest.mark.criu


@pytest.fixture
def source(tmp_path: Path) -> Iterator[TransferServer]:
    """Node pi1's transfer service, serving the lazy dumps under ``tmp_path/images``."""
    ok, why = criu_works()
    need(ok, why)
    s = TransferServer(tmp_path / "incoming", SECRET, "pi1", lazy_root=tmp_path / "images")
    s.start()
    yield s
    s.stop()


def listeners(port: int) -> list[str]:
    out = subprocess.run(
        ["ss", "-ltnH", f"( sport = :{port} )"], capture_output=True, text=True, check=True
    ).stdout
    return [line.split()[3] for line in out.splitlines()]


def test_pages_come_only_through_an_admitted_session(
    source: TransferServer, tmp_path: Path
) -> None:
    pid, log = start_ticker(tmp_path, mib=16)
    pids = [pid]
    try:
        images = tmp_path / "images" / "m1" / "final"
        with socket.socket() as s:
            s.bind((LOOPBACK, 0))
            port = s.getsockname()[1]
        Criu().start_lazy_dump(pid, images, LOOPBACK, port)
        (images / "page-server.port").write_text(f"{port}\n")
        before = max(ticks(log))
        assert listeners(port) == [f"{LOOPBACK}:{port}"]  # not on the cluster network

        def token(secret: bytes = SECRET, dst: str = "pi1", migration: str = "m1") -> str:
            return issue_token(secret, migration, "pi2", dst, time.time())

        refused = [
            (token(secret=b"not-the-cluster-secret-0123"), TokenError, "m1"),
            (token(dst="pi3"), TokenError, "m1"),
            (token(migration="m2"), TokenError, "m1"),
            (token(migration="m9"), PermanentError, "m9"),  # no lazy dump of m9 here
        ]
        for bad, error, migration in refused:
            with pytest.raises(error):
                open_lazy(source.address, bad, migration, "final")
        assert listeners(port) == [f"{LOOPBACK}:{port}"]  # still waiting for the real one

        landed = tmp_path / "dst"
        subprocess.run(["cp", "-a", str(images), str(landed)], check=True)
        good = token()
        lazy = open_lazy(source.address, good, "m1", "final")
        with pytest.raises(TokenError, match="already used"):
            open_lazy(source.address, good, "m1", "final")  # no replay
        source.stop()  # the worker goes (restarted, say): the splice is a process of its own
        Criu().start_lazy_pages(landed, lazy)
        pids.append(Criu().restore(landed, extra=("--lazy-pages",)).pid)
        wait_served(images, 60, None, lambda: None)  # every page went through the session
        again = TransferServer(tmp_path / "incoming", SECRET, "pi1", lazy_root=tmp_path / "images")
        again.start()
        try:  # a restarted worker's server: the page server has gone with its last page
            with pytest.raises(PermanentError, match="no post-copy page server"):
                open_lazy(again.address, token(), "m1", "final")
        finally:
            again.stop()
        wait_for(lambda: max(ticks(log)) > before + 3)
        assert_went_on([v for v in ticks(log) if v >= before - 3], before)
    finally:
        for p in pids:
            procs.kill_and_wait(p)
