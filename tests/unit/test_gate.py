"""The data-plane gate's bookkeeping, on real socket pairs and an explicit clock."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from workers.dataplane.gate import Gate, GateLimits


@pytest.fixture
def pairs() -> Iterator[list[tuple[socket.socket, socket.socket]]]:
    made: list[tuple[socket.socket, socket.socket]] = []
    yield made
    for a, b in made:
        a.close()
        b.close()


def conn(pairs: list[tuple[socket.socket, socket.socket]]) -> tuple[socket.socket, socket.socket]:
    pair = socket.socketpair()
    pairs.append(pair)
    return pair


def cut(client: socket.socket) -> bool:
    """Whether the server side was shut down (the client reads end of file)."""
    client.settimeout(0.1)
    try:
        return client.recv(1) == b""
    except TimeoutError:
        return False


def test_a_peer_over_its_share_loses_its_oldest_connection(pairs) -> None:
    gate = Gate(GateLimits(per_peer=2, max_pending=10))
    conns = [conn(pairs) for _ in range(3)]
    for k, (srv, _) in enumerate(conns):
        gate.enter(srv, "10.0.0.9", now=float(k))
    assert cut(conns[0][1]) and not cut(conns[1][1]) and not cut(conns[2][1])
    assert gate.counts()["peer_full"] == 1 and gate.pending() == 2
    other = conn(pairs)
    gate.enter(other[0], "10.0.0.8", now=3.0)  # another address has its own share
    assert gate.pending() == 3


def test_a_full_pool_loses_its_oldest_and_the_newcomer_always_gets_in(pairs) -> None:
    gate = Gate(GateLimits(per_peer=5, max_pending=2))
    a, b, c = conn(pairs), conn(pairs), conn(pairs)
    gate.enter(a[0], "10.0.0.1", 0.0)
    gate.enter(b[0], "10.0.0.2", 0.1)
    gate.enter(c[0], "10.0.0.3", 0.2)
    assert cut(a[1]) and gate.is_cut(a[0]) and not gate.is_cut(c[0])
    assert gate.authenticate(c[0], 0.3)
    assert not gate.authenticate(a[0], 0.3)  # a cut connection never gets a slot
    assert gate.leave(a[0]) and not gate.leave(c[0])


def test_the_deadline_counts_from_entry_not_from_the_last_byte(pairs) -> None:
    gate = Gate(GateLimits(deadline_s=3.0))
    a, b = conn(pairs), conn(pairs)
    gate.enter(a[0], "10.0.0.1", 0.0)
    gate.enter(b[0], "10.0.0.1", 2.0)
    assert gate.sweep(2.9) == 0
    assert gate.sweep(3.0) == 1 and cut(a[1]) and not cut(b[1])
    assert gate.authenticate(b[0], 4.0)
    assert gate.sweep(100.0) == 0  # authenticated: no longer the deadline's
    assert gate.counts()["deadline"] == 1


def test_authenticated_slots_are_capped_and_a_refusal_counted(pairs) -> None:
    gate = Gate(GateLimits(max_sessions=1))
    a, b = conn(pairs), conn(pairs)
    gate.enter(a[0], "10.0.0.1", 0.0)
    gate.enter(b[0], "10.0.0.1", 0.0)
    assert gate.authenticate(a[0], 0.1)
    assert not gate.authenticate(b[0], 0.1)
    gate.leave(a[0])
    assert gate.authenticate(b[0], 0.2)
    gate.refused(0.3, "bad token")
    assert gate.counts() == {
        "deadline": 0,
        "peer_full": 0,
        "pending_full": 0,
        "busy": 1,
        "refused": 1,
    }
