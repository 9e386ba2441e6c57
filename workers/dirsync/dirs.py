"""A container's node-local directories: which paths may be synced, and their copies' lifecycle.

A container declares them when it starts (``ferry run --sync DIR``); each is
copied to the destination by rsync (workers.dirsync.rsync) when it migrates. A
declared directory must be, on the node that checks it (the source when the
container starts, the destination again before it writes anything):

- an absolute, normalised path (no ``.``, ``..``, ``//`` or trailing ``/``);
- the container's own workdir (``<container root>/<name>``) or below it, or
  strictly below one of the node's ``sync_roots`` (never a root itself: it
  holds other containers' directories);
- free of symlinks from that root down (a link could lead the copy, or its
  removal, anywhere);
- not inside another declared directory.

The source's directories must exist. On the destination each must not exist
yet: it is created for the migration, its creation recorded under
``<node>/fsync/<mid>`` before anything is written (:func:`claim`), so a
rollback removes exactly what this migration made (:func:`drop_partial`) and
never a directory that held data before (shared storage needs no sync and is
refused here: the path exists on both nodes).
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

from workers.dirsync.rsync import RsyncTarget
from workers.errors import BadRequest

MAX_DIRS = 16


def parse_ports(text: str) -> tuple[int, int] | None:
    """The ``sync_ports`` setting (``FIRST-LAST``; empty: any free port)."""
    if not text:
        return None
    first, _, last = text.partition("-")
    if not (first.isdigit() and last.isdigit() and 1024 <= int(first) <= int(last) < 65536):
        raise BadRequest(f"bad sync_ports {text!r}: want FIRST-LAST, e.g. 7071-7086")
    return int(first), int(last)


def parse_roots(text: str) -> tuple[Path, ...]:
    """The ``sync_roots`` setting (``:``-separated absolute paths) as paths."""
    roots = tuple(Path(p) for p in text.split(":") if p)
    for r in roots:
        if not r.is_absolute() or os.path.normpath(r) != str(r) or str(r) == "/":
            raise BadRequest(f"bad sync root {str(r)!r}: want an absolute, normalised path, not /")
    return roots


def check_dirs(
    dirs: object, roots: Sequence[Path], workdir: Path, *, exist: bool
) -> tuple[str, ...]:
    """``dirs`` if every one may be synced on this node (see the module doc), else BadRequest.

    ``exist``: each must be a directory here (the source; the workdir may be
    missing, the runtime makes it), or must not exist at all (the
    destination, before it creates them).
    """
    if not isinstance(dirs, (list, tuple)) or not all(isinstance(d, str) for d in dirs):
        raise BadRequest("sync dirs must be a list of absolute paths")
    if len(dirs) > MAX_DIRS:
        raise BadRequest(f"at most {MAX_DIRS} sync dirs, not {len(dirs)}")
    for d in dirs:
        _check_one(d, roots, workdir, exist)
    for a in dirs:
        for b in dirs:
            if a is not b and (a == b or Path(a) in Path(b).parents):
                raise BadRequest(f"sync dir {b} is inside sync dir {a}: declare one of them")
    return tuple(dirs)


def check_unshared(name: str, sync: Sequence[str], others: Mapping[str, Sequence[str]]) -> None:
    """BadRequest if a dir of container ``name``'s ``sync`` overlaps one another container
    (``others``: name -> its sync dirs) declared."""
    for other, theirs in others.items():
        if other == name:
            continue
        for a in sync:
            for b in theirs:
                if a == b or Path(a) in Path(b).parents or Path(b) in Path(a).parents:
                    raise BadRequest(f"sync dir {a} overlaps {b}, declared by {other!r}")


def _check_one(d: str, roots: Sequence[Path], workdir: Path, exist: bool) -> None:
    if not d.startswith("/") or any(ord(c) < 32 for c in d):
        raise BadRequest(f"bad sync dir {d!r:.200}: want an absolute path")
    if os.path.normpath(d) != d or d.startswith("//") or "/../" in d + "/" or "/./" in d + "/":
        raise BadRequest(f"bad sync dir {d!r:.200}: no '.', '..', '//' or trailing '/' in it")
    p = Path(d)
    root = (
        workdir
        if p == workdir or workdir in p.parents
        else next((r for r in roots if r in p.parents), None)
    )
    if root is None:
        allowed = ", ".join(str(r) for r in (*roots, workdir))
        raise BadRequest(
            f"sync dir {d} is outside what this node allows to sync ({allowed}): "
            "set FERRY_SYNC_ROOTS on the node (':'-separated dirs; docs/operating.md)"
        )
    for part in (root, *reversed([q for q in p.parents if root in q.parents]), p):
        if part.is_symlink():
            raise BadRequest(f"sync dir {d}: {part} is a symlink")
        if part.exists() and not part.is_dir():
            raise BadRequest(f"sync dir {d}: {part} is not a directory")
    if exist and not p.is_dir() and p != workdir:
        raise BadRequest(f"sync dir {d} does not exist (or is not a directory)")
    if not exist and p.exists():
        raise BadRequest(
            f"sync dir {d} already exists here: it would hold data not from this "
            "migration (shared storage needs no sync)"
        )


def claim(state: Path, dirs: Sequence[str], roots: Sequence[Path], workdir: Path) -> None:
    """Create the destination's empty ``dirs`` for a migration, recording what it creates.

    Safe to repeat: a claim already recorded in ``state`` is only completed.
    Two migrations claiming one dir at once: one of them is refused.
    """
    record = state / "claim.json"
    state.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with open(state.parent / ".claim.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # from the check to the mkdir: no other claim between
        if not record.exists():
            check_dirs(list(dirs), roots, workdir, exist=False)
            created = {}
            for d in dirs:
                p = Path(d)
                missing = [q for q in (*reversed(p.parents), p) if not q.exists()]
                created[d] = str(missing[0])
            state.mkdir(exist_ok=True, mode=0o700)
            tmp = state / "claim.tmp"
            tmp.write_text(json.dumps(created))
            os.replace(tmp, record)  # recorded before it is made: a rollback finds it
        for d in json.loads(record.read_text()):
            Path(d).mkdir(parents=True, exist_ok=True)


def start_targets(
    state: Path, mid: str, secret: bytes, host: str, ports: tuple[int, int] | None = None
) -> list[dict[str, object]]:
    """Start (or find) one rsync daemon per claimed dir, in ``ports`` if given; their
    dirs, ports and module.
    """
    out: list[dict[str, object]] = []
    for i, d in enumerate(claimed(state)):
        port, module = RsyncTarget(
            Path(d), mid, secret, host, state=state / f"rsyncd-{i}", ports=ports
        ).start()
        out.append({"dir": d, "port": port, "module": module})
    return out


def stop_targets(state: Path, mid: str) -> None:
    """Stop this migration's rsync daemons, if any still run; safe to repeat."""
    for i, d in enumerate(claimed(state)):
        daemon = state / f"rsyncd-{i}"
        if daemon.exists():
            # A root already removed is nothing to unmunge: point at the state
            # instead. Stopping needs neither the secret nor the address.
            root = Path(d) if Path(d).is_dir() else state
            RsyncTarget(root, mid, b"", "127.0.0.1", state=daemon).stop()


def drop_partial(state: Path) -> list[str]:
    """Remove what the claim in ``state`` created (the daemons must be stopped); what went."""
    created: dict[str, str] = (
        json.loads((state / "claim.json").read_text()) if (state / "claim.json").exists() else {}
    )
    for d, top in created.items():
        shutil.rmtree(d, ignore_errors=True)
        for parent in Path(d).parents:  # and the parents it made, while nothing else is in them
            if parent != Path(top) and Path(top) not in parent.parents:
                break
            try:
                parent.rmdir()
            except OSError:
                break
    shutil.rmtree(state, ignore_errors=True)
    return sorted(created)


def forget(state: Path) -> None:
    """Drop a finished migration's sync state, keeping the copies (they are the container's now)."""
    shutil.rmtree(state, ignore_errors=True)


def remove(dirs: Sequence[str], roots: Sequence[Path], workdir: Path) -> list[str]:
    """Remove the source's copies of ``dirs``, after checking them again; those removed."""
    present = [d for d in dirs if Path(d).exists() or Path(d).is_symlink()]
    check_dirs(present, roots, workdir, exist=True)
    for d in present:
        shutil.rmtree(d)
    return present


def claimed(state: Path) -> list[str]:
    """The dirs a migration's claim in ``state`` holds."""
    try:
        return list(json.loads((state / "claim.json").read_text()))
    except (OSError, ValueError):
        return []
