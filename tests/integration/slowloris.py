"""A slowloris, run as its own process: ``python -m tests.integration.slowloris HOST PORT SECONDS [PEERS PER_PEER]``.

Keeps ``peers * per_peer`` connections (default 20 * 10) to the listener open from the
addresses 127.0.0.2 and up, sends one byte a second on each and never a
whole frame, and reconnects as soon as one is cut, as a determined attacker
would. Prints, as JSON, how many it opened, the most it held at once, and
how long each cut connection lived (connect to close).
"""

from __future__ import annotations

import errno
import json
import selectors
import socket
import sys
import time

PEERS = 20  # attacker addresses 127.0.0.2 ... 127.0.0.21
PER_PEER = 10  # connections from each: 200 in all
TRICKLE = b"\x00\x00\x10\x00" + b"{" * 64  # a frame header, then a body that never ends


def main(
    host: str, port: int, seconds: float, peers: int = PEERS, per_peer: int = PER_PEER
) -> dict[str, object]:
    sel = selectors.DefaultSelector()
    opened = 0
    lifetimes: list[float] = []

    def connect(peer: str) -> None:
        nonlocal opened
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind((peer, 0))
        sock.setblocking(False)
        code = sock.connect_ex((host, port))
        if code not in (0, errno.EINPROGRESS):
            sock.close()
            return
        opened += 1
        sel.register(sock, selectors.EVENT_READ, [peer, time.monotonic(), 0])

    for p in range(peers):
        for _ in range(per_peer):
            connect(f"127.0.0.{p + 2}")
    most = len(sel.get_map())
    end = time.monotonic() + seconds
    next_byte = time.monotonic()
    while time.monotonic() < end:
        for key, _ in sel.select(timeout=0.05):
            sock: socket.socket = key.fileobj  # type: ignore[assignment]
            try:
                if sock.recv(4096):
                    continue
            except BlockingIOError:
                continue
            except OSError:
                pass
            peer, since, _ = key.data
            lifetimes.append(time.monotonic() - since)
            sel.unregister(sock)
            sock.close()
            connect(peer)  # straight back in
        most = max(most, len(sel.get_map()))
        if time.monotonic() >= next_byte:
            next_byte += 1.0
            for key in list(sel.get_map().values()):
                sent = key.data[2] % len(TRICKLE)
                try:
                    key.fileobj.send(TRICKLE[sent : sent + 1])  # type: ignore[union-attr]
                    key.data[2] += 1
                except OSError:
                    pass
    return {"opened": opened, "most_open": most, "lifetimes": lifetimes}


if __name__ == "__main__":
    shape = [int(a) for a in sys.argv[4:6]]
    print(json.dumps(main(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), *shape)))
