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


# Two waits with a moment of running between: a thread serves the first page
# 0.3 s after the main thread touched it, and the main thread touches the next
# at once (memmove, which lets the server thread have the GIL), which nobody serves.
TWICE = f"""
import ctypes, fcntl, mmap, sys, threading, time
sys.path.insert(0, {sys.path[0]!r})
from workers.tracker import uffd
libc = ctypes.CDLL(None, use_errno=True)
fd = libc.syscall({arch().userfaultfd}, 0)
fcntl.ioctl(fd, uffd.UFFDIO_API, uffd._Api(uffd.UFFD_API, 0, 0))
area = mmap.mmap(-1, 2 * 4096)
addr = ctypes.addressof(ctypes.c_char.from_buffer(area))
fcntl.ioctl(fd, uffd.UFFDIO_REGISTER, uffd._Register(addr, 2 * 4096, 1, 0))
src = ctypes.create_string_buffer(4096)
COPY = uffd._iowr(0xAA, 0x03, 40)
def serve():
    time.sleep(0.6)
    print(f"{{time.time():.6f}}", flush=True)
    fcntl.ioctl(fd, COPY, (ctypes.c_uint64 * 5)(addr, ctypes.addressof(src), 4096, 0, 0))
threading.Thread(target=serve).start()
time.sleep(0.3)
out = ctypes.create_string_buffer(1)
ctypes.memmove(out, addr, 1)
ctypes.memmove(out, addr + 4096, 1)
"""


def test_two_waits_with_a_run_between_are_two() -> None:
    twice = subprocess.Popen([sys.executable, "-c", TWICE], stdout=subprocess.PIPE, text=True)
    daemon = subprocess.Popen(["sleep", "1.5"])
    try:
        runs = faultwatch.watch(twice.pid, daemon.pid, time.monotonic() + 10)
        assert twice.stdout is not None
        served = float(twice.stdout.readline())
    finally:
        twice.kill()
        daemon.kill()
        twice.wait()
        daemon.wait()
    assert len(runs) == 2, runs
    (_, first_end), (second_start, _) = runs
    assert first_end <= served <= second_start


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
