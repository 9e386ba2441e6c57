"""Post-copy's pages are counted as they cross: the PAGES phase reports the bytes
CRIU's page server has sent, live, and the bytes are measured on a real socket."""

from __future__ import annotations

import socket
import sys
import threading

import pytest

from tests.integration.helpers import assert_went_on, dirtying, ticks, wait_for
from workers import sockets


def test_bytes_sent_counts_what_a_listening_port_sent() -> None:
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    conn, _ = server.accept()
    got = bytearray()

    def drain() -> None:
        while len(got) < 3 << 20:
            got.extend(client.recv(1 << 16))

    reader = threading.Thread(target=drain)
    reader.start()
    conn.sendall(b"x" * (3 << 20))
    reader.join(timeout=30)
    try:
        assert sockets.bytes_sent(port) >= 3 << 20
        assert sockets.bytes_sent(port + 1 if port < 65535 else port - 1) == 0
    finally:
        for s in (conn, client, server):
            s.close()


@pytest.mark.criu
def test_a_postcopy_reports_its_lazy_pages_while_they_cross(cluster) -> None:
    client = cluster.client
    info = client.run("n1", [sys.executable, "-u", "-c", dirtying(256, 64)], name="lazybar")
    wait_for(lambda: len(ticks(info["log"])) > 5, timeout=60)
    handle = client.migrate("lazybar", "n2", strategy="postcopy")
    seen: list[dict[str, object]] = []

    def lazy_progress() -> bool:
        m = client.status(handle.id)
        p = m.results.get("progress", {})
        if p.get("stream") == "lazy pages":
            seen.append(p)
        return m.state.final

    wait_for(lazy_progress, timeout=180, every=0.02)
    m = client.status(handle.id)
    assert m.state.value == "done", m.errors
    assert seen, "no progress was reported while the pages crossed"
    assert max(int(p["bytes_sent"]) for p in seen) > 0  # type: ignore[call-overload]
    assert all(p["bytes_total"] == m.options.memory_bytes for p in seen)
    before = max(ticks(info["log"]))
    wait_for(lambda: max(ticks(info["log"])) >= before + 5, timeout=30)
    assert_went_on(ticks(info["log"]), before)
    client.kill("lazybar")
