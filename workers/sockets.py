"""Facts about this node's TCP sockets, from ``ss`` (iproute2's sock_diag client)."""

from __future__ import annotations

import re
import subprocess

_SENT = re.compile(r"\bbytes_sent:(\d+)")


def bytes_sent(port: int) -> int:
    """Bytes sent so far by the established TCP connections whose local port is
    ``port`` (in this network namespace); 0 when there are none or ``ss`` fails.
    """
    try:
        out = subprocess.run(
            ["ss", "-tinH", "state", "established", f"( sport = :{int(port)} )"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return 0
    return sum(int(n) for n in _SENT.findall(out))
