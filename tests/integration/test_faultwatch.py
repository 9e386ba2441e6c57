"""The post-copy watcher sees a real thread wait in the kernel for a page nobody serves."""

from __future__ import annotations

import subprocess
import sys
import time

from workers.criu import faultwatch
from workers.tracker.inject import arch

# A process that registers a page of its own for missing-page faults, says when,
# then touches it: it sleeps in handle_userfault until it is killed.
STUCK = f"""
import ctypes, fcntl, mmap, sys, time
sys.path.insert(0, {sys.path[0]!r})
from workers.tracker import uffd
libc = ctypes.CDLL(None, use_errno=True)
fd = libc.syscall({arch().userfaultfd}, 0)
assert fd >= 0, ctypes.get_errno()
fcntl.ioctl(fd, uffd.UFFDIO_API, uffd._Api(uffd.UFFD_API, 0, 0))
page = mmap.mmap(-1, 4096)
addr = ctypes.addressof(ctypes.c_char.from_buffer(page))
fcntl.ioctl(fd, uffd.UFFDIO_REGISTER, uffd._Register(addr, 4096, 1, 0))
time.sleep(0.3)
print(f"{{time.time():.6f}}", flush=True)
ctypes.string_at(addr, 1)
"""


def test_a_thread_waiting_for_a_page_is_one_run_until_the_daemon_exits() -> None:
    stuck = subprocess.Popen([sys.executable, "-c", STUCK], stdout=subprocess.PIPE, text=True)
    daemon = subprocess.Popen(["sleep", "1.5"])
    try:
        ends = time.time() + 1.5
        runs = faultwatch.watch(stuck.pid, daemon.pid, time.monotonic() + 10)
        assert stuck.stdout is not None
        touched = float(stuck.stdout.readline())
        assert stuck.poll() is None, "the toucher exited: its page was never registered"
    finally:
        stuck.kill()
        daemon.kill()
        stuck.wait()
        daemon.wait()
    assert len(runs) == 1, runs
    ((start, end),) = runs
    assert touched <= start < touched + 0.5  # a sample or two late, more on a busy machine
    assert end > ends - 0.5
