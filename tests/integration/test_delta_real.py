"""The delta strategy on real CRIU: two snapshots of a running container that dirties its
memory, the delta between them rebuilt into a full image set, and the container restored
from the rebuilt set with its counter going on."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tasks.api.localcluster import ROOT
from tests.conftest import criu_works, need
from tests.integration.helpers import ticks, wait_for
from workers import procs
from workers.criu.adapter import Criu
from workers.dataplane.delta import apply_delta, make_delta

pytestmark = pytest.mark.criu

# 64 MB of non-zero data; every 100 ms, ~5 % of its pages rewritten, then a tick.
DIRTIER = """\
import random, time
P = 4096
buf = bytearray(b"\\xa5") * (64 << 20)
pages = len(buf) // P
i = 0
while True:
    for p in random.sample(range(pages), pages // 20):
        buf[p * P] = buf[p * P] % 255 + 1
    print("tick", i, flush=True)
    i += 1
    time.sleep(0.1)
"""


@pytest.fixture
def shm(tmp_path: Path) -> Iterator[Path]:
    """A scratch dir on tmpfs, where the delta strategy keeps its snapshots."""
    d = Path(tempfile.mkdtemp(dir="/dev/shm")) if Path("/dev/shm").is_dir() else tmp_path
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def started(shm: Path) -> Iterator[list[int]]:
    """Pids to kill at the end; the first is a dirtier container whose log is ``shm/box/log``."""
    ok, why = criu_works()
    need(ok, why)
    box = shm / "box"
    box.mkdir()
    argv = [
        sys.executable,
        "-m",
        "workers.runtimes.launch",
        "--name",
        "dirtier",
        "--dir",
        str(box),
        "--log",
        str(box / "log"),
        "--",
        sys.executable,
        "-u",
        "-c",
        DIRTIER,
    ]
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, timeout=30, check=False)
    assert proc.returncode == 0, proc.stderr
    pids = [int(proc.stdout)]
    yield pids
    for pid in pids:
        procs.kill_and_wait(pid)


def test_a_delta_between_live_snapshots_rebuilds_them_and_restores(
    shm: Path, started: list[int]
) -> None:
    pid, log, criu = started[0], shm / "box" / "log", Criu()
    wait_for(lambda: len(ticks(log)) >= 3)
    d1, d2, out, target = shm / "d1", shm / "d2", shm / "out", shm / "target"
    criu.dump(pid, d1, leave_running=True)
    after_d1 = max(ticks(log))
    wait_for(lambda: max(ticks(log)) >= after_d1 + 4)  # it rewrites pages between the dumps
    before_dump = max(ticks(log))
    criu.dump(pid, d2, leave_running=True)
    after_dump = max(ticks(log))

    # CRIU wrote the same memory map twice: the pages go as a delta, a fraction of their size.
    assert (d1 / "pagemap-1.img").read_bytes() == (d2 / "pagemap-1.img").read_bytes()
    stats = make_delta(d1, d2, out)
    assert stats.files_delta == 1, "pages-1.img should have gone as a delta"
    assert 0 < stats.blocks_changed < stats.blocks_total * 0.6
    assert stats.bytes_out < stats.bytes_total * 0.6

    base = shm / "base"  # the destination's copy of the first pass
    shutil.copytree(d1, base)
    apply_delta(base, out, target)
    images = sorted(p.name for p in d2.iterdir() if p.suffix != ".log")
    assert sorted(p.name for p in target.iterdir()) == images
    for name in images:
        assert (target / name).read_bytes() == (d2 / name).read_bytes(), name

    assert procs.kill_and_wait(pid)
    printed = len(ticks(log))
    restored = criu.restore(target)
    started.append(restored.pid)
    wait_for(lambda: len(ticks(log)) >= printed + 5)
    went_on = ticks(log)[printed:]
    assert before_dump < went_on[0] <= after_dump + 1, "did not resume from the snapshot"
    assert went_on == list(range(went_on[0], went_on[0] + len(went_on)))
    assert procs.alive(restored.pid)
