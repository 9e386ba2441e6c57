"""Filesystem sync end to end: a real rsync daemon on 127.0.0.1, real rsync pushes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tasks.core.migration import Migration, State
from tasks.node import syncpasses
from tasks.node.context import NodeContext
from tests.conftest import need
from workers import procs
from workers.dirsync.rsync import RsyncTarget, _free_port, password, rsync_push
from workers.errors import BadRequest, CapabilityError, TokenError

SECRET = b"integration-secret-0123456789"
MID = "m1"

Start = Callable[..., tuple[RsyncTarget, int, str]]


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Start]:
    """Start rsync daemons writing into tmp_path/dst (by default); stop them after the test."""
    need(shutil.which("rsync") is not None, "rsync is not installed (apt-get install rsync)")
    started: list[RsyncTarget] = []

    def run(root: Path | None = None, **options: object) -> tuple[RsyncTarget, int, str]:
        root = root or tmp_path / "dst"
        root.mkdir(exist_ok=True)
        target = RsyncTarget(root, MID, SECRET, "127.0.0.1", **options)  # type: ignore[arg-type]
        port, module = target.start()
        started.append(target)
        return target, port, module

    yield run
    for target in started:
        target.stop()


def tree(root: Path) -> dict[str, tuple[str, object, int, int]]:
    """Every entry under ``root``: kind, content or link value, mode bits and owner."""
    out: dict[str, tuple[str, object, int, int]] = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        if path.is_symlink():
            entry: tuple[str, object] = ("link", os.readlink(path))
        elif path.is_dir():
            entry = ("dir", None)
        else:
            entry = ("file", path.read_bytes())
        out[str(path.relative_to(root))] = (*entry, st.st_mode & 0o7777, st.st_uid)
    return out


def populate(src: Path) -> None:
    (src / "sub" / "deeper").mkdir(parents=True)
    (src / "keep.txt").write_text("unchanged")
    (src / "change.txt").write_text("before")
    (src / "gone.txt").write_text("deleted later")
    (src / "sub" / "deeper" / "blob").write_bytes(os.urandom(200_000))
    (src / "script.sh").write_text("#!/bin/sh\n")
    os.chmod(src / "script.sh", 0o750)
    os.chown(src / "keep.txt", 1234, 1234)
    (src / "rel-link").symlink_to("sub/deeper/blob")
    (src / "abs-link").symlink_to("/etc/hostname")


def test_initial_and_final_pass(start: Start, tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("keeping owners needs root")
    src = tmp_path / "src"
    populate(src)
    target, port, module = start()
    first = rsync_push(src, "127.0.0.1", port, module, MID, SECRET)
    assert first.files == 5 and first.deleted == 0
    assert first.bytes_sent > 200_000
    assert tree(tmp_path / "dst") == tree(src)
    # What changes while the container runs, then the final pass in the freeze window.
    (src / "change.txt").write_text("after, and longer")
    (src / "added.txt").write_text("new")
    (src / "gone.txt").unlink()
    final = rsync_push(src, "127.0.0.1", port, module, MID, SECRET)
    assert (final.files, final.deleted) == (2, 1)
    assert final.bytes_sent < 10_000  # only what changed
    target.stop()
    assert tree(tmp_path / "dst") == tree(src)
    assert not target.state.exists()


def test_start_again_finds_the_running_daemon(start: Start, tmp_path: Path) -> None:
    target, port, _ = start(state=tmp_path / "state")
    again = RsyncTarget(tmp_path / "dst", MID, SECRET, "127.0.0.1", state=tmp_path / "state")
    assert again.start()[0] == port
    pid = int((tmp_path / "state" / "rsyncd.pid").read_text())
    again.stop()  # from another object, as another worker process would
    assert not procs.alive(pid)
    assert not (tmp_path / "state").exists()
    target.stop()  # and again: nothing left to do


@pytest.mark.parametrize(
    ("secret", "user"),
    [(b"not-the-cluster-secret-0123", MID), (SECRET, "m2")],
    ids=["wrong-secret", "other-migration"],
)
def test_wrong_password_refused_nothing_written(
    start: Start, tmp_path: Path, secret: bytes, user: str
) -> None:
    src = tmp_path / "src"
    populate(src)
    _, port, module = start()
    with pytest.raises(TokenError, match="auth failed"):
        rsync_push(src, "127.0.0.1", port, module, user, secret)
    assert list((tmp_path / "dst").iterdir()) == []


def test_other_hosts_refused(start: Start, tmp_path: Path) -> None:
    src = tmp_path / "src"
    populate(src)
    _, port, module = start(allow="10.99.0.2")
    with pytest.raises(TokenError, match="allowed source"):
        rsync_push(src, "127.0.0.1", port, module, MID, SECRET)
    assert list((tmp_path / "dst").iterdir()) == []


@pytest.mark.parametrize("chroot", [True, False], ids=["chroot", "munged"])
def test_symlink_cannot_lead_a_write_outside(start: Start, tmp_path: Path, chroot: bool) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    src, evil = tmp_path / "src", tmp_path / "evil"
    src.mkdir()
    (src / "abs").symlink_to(outside)
    (src / "rel").symlink_to("../outside")
    target, port, module = start(chroot=chroot)
    rsync_push(src, "127.0.0.1", port, module, MID, SECRET)
    # A client that sends files below the links, without their directories
    # (--no-implied-dirs), as a hostile source would.
    for link in ("abs", "rel"):
        (evil / link).mkdir(parents=True)
        (evil / link / "pwned").write_text("written through a symlink")
    pw = tmp_path / "pw"
    pw.write_text(password(SECRET, MID))
    pw.chmod(0o600)
    argv = [
        "rsync",
        "-a",
        "-R",
        "--no-implied-dirs",
        f"--password-file={pw}",
        f"{evil}/./abs/pwned",
        f"{evil}/./rel/pwned",
        f"rsync://{MID}@127.0.0.1:{port}/{module}/",
    ]
    done = subprocess.run(argv, capture_output=True, text=True)
    assert done.returncode != 0
    assert list(outside.iterdir()) == []
    assert sorted(p.name for p in (tmp_path / "dst").iterdir()) == ["abs", "rel"]
    target.stop()  # the links keep (or get back) their values
    assert os.readlink(tmp_path / "dst" / "abs") == str(outside)
    assert os.readlink(tmp_path / "dst" / "rel") == "../outside"


def test_daemons_listen_in_the_port_range_the_firewall_admits(start: Start, tmp_path: Path) -> None:
    def free(p: int) -> bool:
        try:
            return _free_port("127.0.0.1", (p, p)) == p
        except CapabilityError:
            return False

    # Two free ports below the ephemeral range, where no other test's sockets land.
    first = next(p for p in range(20000, 30000, 2) if free(p) and free(p + 1))
    ports = (first, first + 1)
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    assert {start(one, ports=ports)[1], start(two, ports=ports)[1]} == {first, first + 1}
    (tmp_path / "three").mkdir()
    with pytest.raises(CapabilityError, match="no free port"):
        start(tmp_path / "three", ports=ports)


def test_bandwidth_limit(start: Start, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_bytes(os.urandom(3_000_000))
    _, port, module = start()
    stats = rsync_push(src, "127.0.0.1", port, module, MID, SECRET, bandwidth_bps=2e6)
    assert 1.0 < stats.seconds < 4.0  # 1.5 s at 2 MB/s


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda p: RsyncTarget(p, "../x", SECRET, "127.0.0.1"), "bad migration id"),
        (lambda p: RsyncTarget(Path("relative"), MID, SECRET, "127.0.0.1"), "absolute path"),
        (lambda p: RsyncTarget(p, MID, SECRET, "-oProxyCommand=x"), "bad host"),
        (lambda p: RsyncTarget(p, MID, SECRET, "127.0.0.1", allow="*"), "bad source address"),
        (lambda p: rsync_push(p, "127.0.0.1", 873, "fs/../x", MID, SECRET), "bad module"),
        (lambda p: rsync_push(p / "nope", "127.0.0.1", 873, "fs", MID, SECRET), "not a dir"),
    ],
    ids=["mid", "root", "host", "allow", "module", "src"],
)
def test_bad_input_refused(tmp_path: Path, call: Callable[[Path], object], message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        call(tmp_path)


@pytest.mark.parametrize(
    ("final", "kept"),
    [
        (State.DONE, True),  # the copy is the container's now
        (State.ROLLED_BACK, False),  # ABORT never got there: the partial copy goes
        (State.FAILED, True),  # a copy may be in use here: keep it
        (None, True),  # the record is gone: never guess, keep it
    ],
    ids=["done", "rolled-back", "failed", "unknown"],
)
def test_a_destination_s_daemons_outlive_no_migration(
    tmp_path: Path, final: State | None, kept: bool
) -> None:
    """PREPARE twice finds the same daemons; the heartbeat's GC stops them once the migration is final."""
    need(shutil.which("rsync") is not None, "rsync is not installed (apt-get install rsync)")
    root, src = tmp_path / "local", tmp_path / "src"
    root.mkdir()
    populate(src)
    ctx = NodeContext(
        node="b",
        runtime=None,
        node_dir=tmp_path / "node",  # type: ignore[arg-type]
        address="127.0.0.1:1",
        secret=SECRET,
        container_root=tmp_path / "shared",
        sync_roots=(root,),
    )
    m = Migration(id="m-00000000000a", container="web", src="a", dst="b", sync=(str(root / "web"),))
    first, again = syncpasses.open_targets(ctx, m), syncpasses.open_targets(ctx, m)
    assert first == again
    target = first["sync"][0]
    port = int(target["address"].rpartition(":")[2])
    rsync_push(src, "127.0.0.1", port, target["module"], m.id, SECRET)
    state = syncpasses.state_dir(ctx.node_dir, m.id)
    pid = json.loads((state / "rsyncd-0" / "daemon.json").read_text())["pid"]
    assert syncpasses.collect(ctx.node_dir, lambda mid: State.RUNNING) == []
    assert procs.alive(pid)
    assert syncpasses.collect(ctx.node_dir, lambda mid: final) == [m.id]
    assert not procs.alive(pid) and not state.exists()
    assert (root / "web" / "keep.txt").exists() is kept
