"""Which dirs a container may declare for sync, and what a destination's claim removes again."""

from __future__ import annotations

from pathlib import Path

import pytest

from workers.dirsync import dirs as syncdirs
from workers.errors import BadRequest


@pytest.fixture
def node(tmp_path: Path) -> tuple[Path, Path]:
    """A node's sync root (with a job dir, a file and a symlink in it) and a container's workdir."""
    root, workdir = tmp_path / "local", tmp_path / "shared" / "web"
    (root / "job" / "sub").mkdir(parents=True)
    (root / "file").write_text("x")
    (root / "link").symlink_to(root / "job")
    workdir.mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    return root, workdir


@pytest.mark.parametrize(
    ("rel", "message"),
    [
        ("local/job", None),
        ("local/job/sub", None),
        ("shared/web", None),  # the container's own workdir
        ("local/link", "is a symlink"),
        ("local/link/sub", "is a symlink"),
        ("local/file", "not a directory"),
        ("local/missing", "does not exist"),
        ("local", "outside what this node allows"),  # a root itself: other containers' dirs
        ("elsewhere", "outside what this node allows"),
        ("shared/other", "outside what this node allows"),  # another container's workdir
        ("local/job/../job", "no '.', '..'"),
        ("local/./job", "no '.', '..'"),
        ("local/job/", "no '.', '..'"),
    ],
)
def test_source_rules(node: tuple[Path, Path], rel: str, message: str | None) -> None:
    root, workdir = node
    d = f"{root.parent}/{rel}"
    if message is None:
        assert syncdirs.check_dirs([d], [root], workdir, exist=True) == (d,)
    else:
        with pytest.raises(BadRequest, match=message):
            syncdirs.check_dirs([d], [root], workdir, exist=True)


@pytest.mark.parametrize(
    ("dirs", "message"),
    [
        ("/etc", "must be a list"),
        ([1], "must be a list"),
        (["relative"], "want an absolute path"),
        (["//local/job"], "want an absolute path|no '.'"),
        (["/local/job\n"], "want an absolute path"),
        ([f"/x{i}" for i in range(17)], "at most 16"),
    ],
)
def test_malformed_declarations(node: tuple[Path, Path], dirs: object, message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        syncdirs.check_dirs(dirs, [node[0]], node[1], exist=True)


def test_nested_dirs_are_refused(node: tuple[Path, Path]) -> None:
    root, workdir = node
    with pytest.raises(BadRequest, match="inside sync dir"):
        syncdirs.check_dirs(
            [str(root / "job"), str(root / "job" / "sub")], [root], workdir, exist=True
        )


def test_a_destination_accepts_only_dirs_that_do_not_exist(node: tuple[Path, Path]) -> None:
    root, workdir = node
    assert syncdirs.check_dirs([str(root / "new" / "deeper")], [root], workdir, exist=False)
    with pytest.raises(BadRequest, match="already exists here"):
        syncdirs.check_dirs([str(root / "job")], [root], workdir, exist=False)


@pytest.mark.parametrize("text", ["relative", "/a/../b", "/"])
def test_bad_sync_roots(text: str) -> None:
    with pytest.raises(BadRequest, match="bad sync root"):
        syncdirs.parse_roots(text)


def test_claim_then_drop_removes_only_what_the_claim_made(
    node: tuple[Path, Path], tmp_path: Path
) -> None:
    root, workdir = node
    state = tmp_path / "state" / "m-000000000001"
    deep, flat = root / "a" / "b" / "c", root / "job" / "new"
    syncdirs.claim(state, [str(deep), str(flat)], [root], workdir)
    syncdirs.claim(state, [str(deep), str(flat)], [root], workdir)  # redelivered: the same
    assert deep.is_dir() and flat.is_dir()
    assert syncdirs.claimed(state) == [str(deep), str(flat)]
    (deep / "partial").write_text("half a pass")
    (root / "a" / "someone-else").mkdir()  # appeared meanwhile: not the claim's
    assert syncdirs.drop_partial(state) == sorted([str(deep), str(flat)])
    assert not (root / "a" / "b").exists() and (root / "a" / "someone-else").is_dir()
    assert not flat.exists() and (root / "job" / "sub").is_dir()
    assert not state.exists()
    assert syncdirs.drop_partial(state) == []  # and again: nothing left to do


def test_a_claim_refused_records_and_makes_nothing(node: tuple[Path, Path], tmp_path: Path) -> None:
    root, workdir = node
    state = tmp_path / "state" / "m-000000000002"
    with pytest.raises(BadRequest, match="already exists"):
        syncdirs.claim(state, [str(root / "fresh"), str(root / "job")], [root], workdir)
    assert not state.exists() and not (root / "fresh").exists()


def test_remove_checks_again_and_tolerates_what_is_gone(node: tuple[Path, Path]) -> None:
    root, workdir = node
    assert syncdirs.remove([str(root / "job"), str(root / "gone")], [root], workdir) == [
        str(root / "job")
    ]
    assert not (root / "job").exists()
    with pytest.raises(BadRequest, match="is a symlink"):
        syncdirs.remove([str(root / "link")], [root], workdir)
    assert (root / "link").is_symlink()
