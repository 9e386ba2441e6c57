"""The uffd-wp dirty tracker on a real process: a pass reads exactly the pages written."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tasks.api.localcluster import ROOT
from tests.conftest import criu_works, need
from tests.integration.helpers import assert_went_on, bad_ticks, ticks, verifying, wait_for
from workers import procs
from workers.criu.adapter import Criu
from workers.errors import CapabilityError
from workers.tracker import inject, pack
from workers.tracker.tracker import Tracker

PAGE = os.sysconf("SC_PAGE_SIZE")
CHILD = r"""
import ctypes, mmap, sys
PAGE = mmap.PAGESIZE
def region(n, seed):
    m = mmap.mmap(-1, n * PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    for i in range(n):
        m[i * PAGE:(i + 1) * PAGE] = bytes([(seed + i) % 251 + 1]) * PAGE
    return m, ctypes.addressof(ctypes.c_char.from_buffer(m))
maps = [region(int(sys.argv[1]), 0)]
print(maps[0][1], flush=True)
for line in sys.stdin:
    cmd, *args = line.split()
    if cmd == "w":
        m = maps[0][0]
        for a in args:
            i = int(a)
            m[i * PAGE + 7] = (m[i * PAGE + 7] + 1) % 256
        print("ok", flush=True)
    elif cmd == "map":
        maps.append(region(int(args[0]), 100))
        print(maps[-1][1], flush=True)
"""


class Child:
    def __init__(self, pages: int) -> None:
        self.pages = pages
        self.p = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(pages)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.p.stdin and self.p.stdout
        self.addr = int(self.p.stdout.readline())

    def say(self, line: str) -> str:
        assert self.p.stdin and self.p.stdout
        self.p.stdin.write(line + "\n")
        self.p.stdin.flush()
        return self.p.stdout.readline().strip()

    def memory(self, addr: int, n: int) -> bytes:
        with open(f"/proc/{self.p.pid}/mem", "rb") as f:
            f.seek(addr)
            return f.read(n * PAGE)


@pytest.fixture
def child() -> Iterator[Child]:
    if os.geteuid() != 0:
        pytest.skip("the tracker injects a system call with ptrace: needs root here")
    c = Child(256)
    yield c
    c.p.kill()
    c.p.wait()


def packed(path: Path, lo: int, hi: int) -> dict[int, bytes]:
    """The pages of a pack inside [lo, hi), by address."""
    out = {}
    with open(path, "rb") as f:
        for _vpid, addr, n, off in pack.records(path):
            for i in range(n):
                a = addr + i * PAGE
                if lo <= a < hi:
                    out[a] = os.pread(f.fileno(), PAGE, off + i * PAGE)
    return out


def one_pass(t: Tracker, path: Path) -> None:
    with pack.PackWriter(path, PAGE) as w:
        t.scan(w)


def test_a_pass_reads_exactly_the_pages_written(child: Child, tmp_path: Path) -> None:
    t = Tracker(child.p.pid)
    lo, hi = child.addr, child.addr + child.pages * PAGE
    try:
        one_pass(t, tmp_path / "1")
        first = packed(tmp_path / "1", lo, hi)
        assert sorted(first) == list(range(lo, hi, PAGE))  # the first pass reads it all
        assert b"".join(first[a] for a in sorted(first)) == child.memory(lo, child.pages)
        assert os.listdir(f"/proc/{child.p.pid}/fd") == ["0", "1", "2"]  # no uffd left there

        written = [3, 17, 100, 255]
        assert child.say("w " + " ".join(map(str, written))) == "ok"
        one_pass(t, tmp_path / "2")
        second = packed(tmp_path / "2", lo, hi)
        assert sorted(second) == [lo + i * PAGE for i in written]
        for a, data in second.items():
            assert data == child.memory(a, 1)

        one_pass(t, tmp_path / "3")  # nothing written in the region since
        assert packed(tmp_path / "3", lo, hi) == {}

        new = int(child.say("map 32"))  # a mapping that appeared: read whole
        assert child.say("w 5") == "ok"
        one_pass(t, tmp_path / "4")
        fourth = packed(tmp_path / "4", new, new + 32 * PAGE)
        assert sorted(fourth) == list(range(new, new + 32 * PAGE, PAGE))
        assert b"".join(fourth[a] for a in sorted(fourth)) == child.memory(new, 32)
        assert sorted(packed(tmp_path / "4", lo, hi)) == [lo + 5 * PAGE]

        assert child.say("w 9 10") == "ok"
        os.kill(child.p.pid, signal.SIGSTOP)
        clean = t.finish()[child.p.pid]
        region = set(range(lo, hi, PAGE))
        assert region - clean == {lo + 9 * PAGE, lo + 10 * PAGE}
    finally:
        t.close()
        os.kill(child.p.pid, signal.SIGCONT)
    assert child.say("w 1") == "ok"  # it went on, unregistered


@pytest.mark.criu
@pytest.mark.parametrize("fork", [False, True], ids=["one-process", "a-tree"])
def test_final_images_rebuilt_from_the_passes_equal_criu_s_and_restore(
    tmp_path: Path, fork: bool
) -> None:
    ok, why = criu_works()
    need(ok, why)
    box = tmp_path / "box"
    box.mkdir()
    argv = [sys.executable, "-m", "workers.runtimes.launch", "--name", "verifier", "--dir",
            str(box), "--log", str(box / "log"), "--", sys.executable, "-u", "-c",
            verifying(16, fork=fork)]  # fmt: skip
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, timeout=30, check=False)
    assert proc.returncode == 0, proc.stderr
    pids = [int(proc.stdout)]
    log = box / "log"
    try:
        wait_for(lambda: len(ticks(log)) >= 3)
        t = Tracker(pids[0])
        packs = []
        for k in range(3):
            packs.append(tmp_path / f"pass-{k}.pack")
            with pack.PackWriter(packs[-1], PAGE) as w:
                stats = t.scan(w)
            assert stats.pages_written > 0 and stats.processes == (2 if fork else 1)
            wait_for(lambda goal=3 + 2 * (k + 1): len(ticks(log)) >= goal)
        images = tmp_path / "final"
        Criu().dump(pids[0], images, leave_stopped=True)
        clean = t.finish()
        split = pack.split_final(images, clean, tmp_path / "out")
        assert 0 < split.pages_sent < split.pages_total / 2  # most pages were already there
        target = tmp_path / "target"
        pack.build_final(tmp_path / "out", packs, target)
        for f in images.glob("pages-*.img"):
            assert (target / f.name).read_bytes() == f.read_bytes(), f.name

        assert procs.kill_and_wait(pids[0])
        printed = max(ticks(log))
        pids.append(Criu().restore(target).pid)
        wait_for(lambda: max(ticks(log)) >= printed + 5)
        assert bad_ticks(log) == []
        assert_went_on(ticks(log), printed)
        if fork:  # the child's memory came back intact too, and it went on
            kids = [ln for ln in log.read_text().splitlines() if ln.startswith("kid ")]
            wait_for(
                lambda: (
                    sum(ln.startswith("kid ") for ln in log.read_text().splitlines())
                    > len(kids) + 3
                )
            )
    finally:
        for pid in pids:
            procs.kill_and_wait(pid)


def test_a_process_with_a_userfaultfd_of_its_own_is_refused_untouched(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("the tracker injects a system call with ptrace: needs root here")
    nr = inject.arch().userfaultfd
    script = f"import ctypes, sys, time\nfd = ctypes.CDLL(None).syscall({nr}, 0o2000001)\n"
    script += "print(fd, flush=True)\ntime.sleep(60)\n"
    p = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout and int(p.stdout.readline()) >= 0
        t = Tracker(p.pid)
        with pytest.raises(CapabilityError, match="uses userfaultfd itself"):
            one_pass(t, tmp_path / "1")
        assert t.procs == {} and p.poll() is None  # nothing injected, it runs on
    finally:
        p.kill()
        p.wait()
