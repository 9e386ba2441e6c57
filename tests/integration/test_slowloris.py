"""A slowloris against a real data-plane listener: real sockets, a real send_files.

Hundreds of connections from many loopback addresses trickle a byte a second
and never present a token (and reconnect as soon as they are cut, as a
determined attacker would). A real transfer started meanwhile succeeds, and
every trickling connection is closed within the token deadline.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tasks.api.localcluster import ROOT
from tests.integration.slowloris import PEERS, PER_PEER
from tests.integration.test_transfer import SECRET, digest, fresh, make
from workers.dataplane.gate import GateLimits
from workers.dataplane.transfer import TransferServer, send_files

MB = 1 << 20
ATTACK_S = 12.0


@pytest.fixture
def server(tmp_path: Path) -> Iterator[TransferServer]:
    s = TransferServer(tmp_path / "dst", SECRET, "pi2")  # the shipped limits
    s.start()
    yield s
    s.stop()


def slowloris(server: TransferServer, seconds: float, *shape: int) -> subprocess.Popen[bytes]:
    host, port = server.address
    argv = [sys.executable, "-m", "tests.integration.slowloris", host, str(port), str(seconds)]
    return subprocess.Popen([*argv, *map(str, shape)], stdout=subprocess.PIPE, cwd=ROOT)


def timed_send(server: TransferServer, src: Path, name: str) -> float:
    started = time.monotonic()
    send_files(server.address, fresh(), "m1", [(src, name)], timeout_s=30)
    return time.monotonic() - started


def test_a_slowloris_neither_stops_a_transfer_nor_holds_its_connections(
    server: TransferServer, tmp_path: Path
) -> None:
    src = make(tmp_path / "src.img", 64 * MB)
    quiet = timed_send(server, src, "quiet.img")
    attack = slowloris(server, ATTACK_S)
    time.sleep(2.0)  # every attacking connection is open and trickling
    during = [timed_send(server, src, f"during{k}.img") for k in range(3)]
    out, _ = attack.communicate(timeout=ATTACK_S + 30)
    seen = json.loads(out)
    for k in range(3):
        assert digest(tmp_path / "dst" / "m1" / "images" / f"during{k}.img") == digest(src)
    deadline = GateLimits().deadline_s
    lifetimes = seen["lifetimes"]
    assert seen["most_open"] >= PEERS * PER_PEER
    assert len(lifetimes) >= PEERS * PER_PEER, "the listener left trickling connections open"
    assert max(lifetimes) <= deadline + 1.0, max(lifetimes)
    refused = server.refusals()
    assert sum(refused.values()) >= PEERS * PER_PEER
    print(
        f"\nslowloris: {PEERS * PER_PEER} connections from {PEERS} addresses for {ATTACK_S:.0f} s, "
        f"{seen['opened']} opened in all, {len(lifetimes)} cut (longest {max(lifetimes):.2f} s); "
        f"64 MiB send quiet {quiet:.2f} s, under attack "
        f"{', '.join(f'{d:.2f}' for d in during)} s; refusals {refused}"
    )


def test_a_trickling_connection_is_cut_at_the_deadline_whatever_it_sends(
    server: TransferServer,
) -> None:
    # 4 addresses x 4 connections: inside every cap, so only the deadline can cut them
    attack = slowloris(server, 8.0, 4, 4)
    out, _ = attack.communicate(timeout=40)
    lifetimes = json.loads(out)["lifetimes"]
    deadline = GateLimits().deadline_s
    assert len(lifetimes) >= 16
    assert all(deadline - 0.5 <= t <= deadline + 1.0 for t in lifetimes), lifetimes
    assert server.refusals()["deadline"] >= 16
