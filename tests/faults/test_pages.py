"""A cold migration whose pages stream goes bad: corrupted on the wire, or its page
server killed mid-dump. Never restored; rolled back with the source running on.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from tests.integration.helpers import ticks, wait_for

pytestmark = pytest.mark.criu

HOLDER = (
    "import time\n"
    "hold = bytearray(b'\\xa5') * (256 << 20)\n"
    "i = 0\n"
    "while True:\n"
    "    print('tick', i, flush=True); i += 1; time.sleep(0.05)\n"
)


def rolled_back_and_running(faults, name: str, log: str, mid: str) -> list[str]:  # type: ignore[no-untyped-def]
    """The migration rolled back; one copy runs, on f1, and its counter went on; its errors."""
    m = faults.client.status(mid)
    assert m.state.value == "rolled_back", (m.state, m.errors)
    assert "restore" not in m.results or "pid" not in m.results["restore"], "restored anyway"
    wait_for(lambda: len(faults.copies(name)) == 1, timeout=10)
    before = max(ticks(log))
    wait_for(lambda: max(ticks(log)) >= before + 8)
    after = ticks(log)
    assert after == sorted(set(after)) and after[-1] > before, "the counter did not go on"
    wait_for(lambda: not faults.leftovers(mid), timeout=10)
    return list(m.errors)


def test_a_corrupted_pages_stream_is_never_restored(faults) -> None:
    client = faults.client
    info = client.run(
        "f1", [sys.executable, "-u", "-c", HOLDER.replace("256", "32")], name="f-pages-corrupt"
    )
    wait_for(lambda: len(ticks(info["log"])) > 5, timeout=30)
    faults.arm("pages:corrupt")
    try:
        handle = client.migrate("f-pages-corrupt", "f2", strategy="cold", page_server="on")
        handle.wait(timeout=120)
    finally:
        faults.disarm()
    errors = rolled_back_and_running(faults, "f-pages-corrupt", info["log"], handle.id)
    assert any("digest does not match" in e for e in errors), errors
    client.kill("f-pages-corrupt")


def test_the_page_server_killed_mid_dump_rolls_back(faults) -> None:
    client = faults.client
    info = client.run("f1", [sys.executable, "-u", "-c", HOLDER], name="f-pages-killed")
    wait_for(lambda: len(ticks(info["log"])) > 5, timeout=60)
    # ~10 s of pages at this cap: time to find the page server and kill it
    handle = client.migrate(
        "f-pages-killed", "f2", strategy="cold", page_server="on", bandwidth_bps=25e6
    )
    incoming = faults.base / "nodes" / "f2" / "incoming" / handle.id
    pids = wait_for(lambda: _page_servers(str(incoming)), timeout=30)
    time.sleep(1.0)  # deliberate: well into the pages before the kill
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    handle.wait(timeout=120)
    errors = rolled_back_and_running(faults, "f-pages-killed", info["log"], handle.id)
    assert any(e.startswith("dump") for e in errors), errors
    client.kill("f-pages-killed")


def _page_servers(where: str) -> list[int]:
    """The page servers writing under ``where`` (others may run on this machine)."""
    out = subprocess.run(
        ["pgrep", "-f", f"criu page-server -D {where}/"], capture_output=True, text=True
    )
    return [int(p) for p in out.stdout.split()]
