"""A TCP echo service and the client that watches it across a move.

``SERVER`` is the container's program: it answers every line on every TCP
connection with the same line, and every UDP datagram with itself (one
process, one thread, epoll). ``EchoClient`` holds ONE
connection to it and sends a numbered line every ``every_s``, waiting for its
answer before the next; it records what a peer of a migrated service sees:
whether the connection broke, whether every answer came back once and in
order, and the longest wait for an answer (the stall). ``SERVER`` takes an
optional size in MiB to hold in memory (``python3 -c SERVER 256``).
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass, field

PORT = 7000
SERVER = (
    "import selectors, socket, sys\n"
    "hold = bytearray(b'x') * (int(sys.argv[1]) << 20 if len(sys.argv) > 1 else 0)\n"
    "sel = selectors.DefaultSelector()\n"
    "s = socket.socket()\n"
    "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
    f"s.bind(('0.0.0.0', {PORT})); s.listen(256); s.setblocking(False)\n"
    "u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
    f"u.bind(('0.0.0.0', {PORT})); u.setblocking(False)\n"
    "sel.register(s, selectors.EVENT_READ); sel.register(u, selectors.EVENT_READ)\n"
    "while True:\n"
    "    for key, _ in sel.select():\n"
    "        c = key.fileobj\n"
    "        if c is s:\n"
    "            c, _ = s.accept(); c.setblocking(False); sel.register(c, selectors.EVENT_READ)\n"
    "        elif c is u:\n"
    "            data, peer = u.recvfrom(2048); u.sendto(data, peer)\n"
    "        else:\n"
    "            try:\n"
    "                data = c.recv(65536)\n"
    "            except OSError:\n"
    "                data = b''\n"
    "            if not data:\n"
    "                sel.unregister(c); c.close()\n"
    "            else:\n"
    "                c.sendall(data)\n"
)


@dataclass
class Seen:
    """What the client saw."""

    sent: int = 0
    answers: list[int] = field(default_factory=list)
    waits: list[tuple[float, float]] = field(default_factory=list)  # (start epoch, s) per line
    longest_s: float = 0.0
    error: str = ""  # the connection broke: how

    @property
    def stalls(self) -> list[tuple[float, float]]:
        """The waits over 50 ms."""
        return [(t, s) for t, s in self.waits if s > 0.05]

    def longest_between(self, start: float, end: float) -> float:
        """The longest wait (s) that began in [start, end] (epoch seconds)."""
        return max((s for t, s in self.waits if start <= t <= end), default=0.0)

    @property
    def in_order(self) -> bool:
        """Every line sent was answered exactly once, in order."""
        return self.answers == list(range(len(self.answers))) and self.sent - len(self.answers) <= 1


class EchoClient:
    """One connection to ``address:PORT``, a numbered line every ``every_s``, in a thread."""

    def __init__(self, address: str, every_s: float = 0.01, timeout_s: float = 60.0) -> None:
        self.sock = socket.create_connection((address, PORT), timeout=10)
        self.sock.settimeout(timeout_s)
        self.every_s = every_s
        self.seen = Seen()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._talk, daemon=True, name="echo-client")

    def start(self) -> EchoClient:
        self._thread.start()
        return self

    def answered(self) -> int:
        return len(self.seen.answers)

    def stop(self) -> Seen:
        """Stop sending, close the connection and say what was seen."""
        self._stop.set()
        self._thread.join(90)
        self.sock.close()
        return self.seen

    def _talk(self) -> None:
        buf, i = b"", 0
        try:
            while not self._stop.is_set():
                asked = time.monotonic()
                self.sock.sendall(f"{i}\n".encode())
                self.seen.sent += 1
                while b"\n" not in buf:
                    data = self.sock.recv(4096)
                    if not data:
                        raise ConnectionError("the server closed the connection")
                    buf += data
                line, _, buf = buf.partition(b"\n")
                self.seen.answers.append(int(line))
                waited = time.monotonic() - asked
                self.seen.longest_s = max(self.seen.longest_s, waited)
                self.seen.waits.append((time.time() - waited, waited))
                i += 1
                time.sleep(self.every_s)
        except (OSError, ValueError) as exc:
            self.seen.error = f"{type(exc).__name__}: {exc}"
