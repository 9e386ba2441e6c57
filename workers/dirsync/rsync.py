"""Filesystem sync: a container's directories that are not on shared storage, copied with rsync.

The destination runs a private rsync daemon per migration (:class:`RsyncTarget`)
whose one module is the target directory; the source pushes into it with
:func:`rsync_push`, once while the container runs and once more, for what
changed, inside the freeze window. The daemon takes one user, the migration
id, whose password is derived from the cluster secret and that id (HMAC), so
only a node holding the secret can write, and only for that migration. Like
the rest of the data plane the channel is authenticated, not encrypted.

As root the daemon chroots into the module, so no symlink can lead a write
outside it and symlinks keep their values; without root rsync munges them
(never followable) and :meth:`RsyncTarget.stop` restores them. No shell.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from workers import procs
from workers.errors import (
    BadRequest,
    CapabilityError,
    NoSpace,
    PermanentError,
    TokenError,
    TransferError,
)
from workers.ids import check_id

MODULE = "fs"
MUNGED = "/rsyncd-munged/"
_HOST = re.compile(r"[A-Za-z0-9][A-Za-z0-9.-]{0,252}")
_STAT = re.compile(
    r"^(Total bytes sent|Number of regular files transferred|Number of deleted "
    r"files): ([\d,]+)",
    re.MULTILINE,
)
_TRANSIENT = {10, 12, 30, 35}  # socket I/O, protocol stream, timeouts: the link, not the files
_START_S = 10.0


@dataclass(frozen=True)
class SyncStats:
    """What one :func:`rsync_push` did."""

    bytes_sent: int  # on the wire, rsync's protocol included
    files: int  # regular files (re)written on the destination
    deleted: int  # entries deleted on the destination
    seconds: float


def password(secret: bytes, mid: str) -> str:
    """The rsync password of migration ``mid``: only holders of the cluster secret know it."""
    return hmac.new(secret, b"ferry-rsync-v1." + mid.encode(), hashlib.sha256).hexdigest()


class RsyncTarget:
    """A private rsync daemon on ``host`` writing into ``root`` for migration ``mid``.

    ``allow`` limits clients to one address; ``ports`` (first, last) is the
    range it listens in (default: any free port). ``state`` keeps the daemon's
    config, secrets and pid (0700; default: a fresh temp dir): with the same
    ``state``, another process finds a running daemon (``start`` returns it
    again) and can ``stop`` it. ``chroot`` defaults to whether this is root.
    """

    def __init__(
        self,
        root: Path,
        mid: str,
        secret: bytes,
        host: str,
        *,
        allow: str | None = None,
        state: Path | None = None,
        chroot: bool | None = None,
        ports: tuple[int, int] | None = None,
    ) -> None:
        self.root, self.mid, self.host = _check_root(root), check_id("migration id", mid), host
        _check_host(host)
        if allow is not None:
            _check_address(allow)
        self._secret, self._allow, self._ports = secret, allow, ports
        self._chroot = os.geteuid() == 0 if chroot is None else chroot
        self.state = _check_conf_path(state or Path(tempfile.mkdtemp(prefix="ferry-rsyncd-")))

    def start(self) -> tuple[int, str]:
        """Start the daemon (or find it running); return its (port, module)."""
        running = self._running()
        if running is not None:
            return running.port, MODULE
        if shutil.which("rsync") is None:
            raise CapabilityError("rsync not found: install it (apt-get install rsync)")
        self.state.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.state, 0o700)
        _write_private(self.state / "secrets", f"{self.mid}:{password(self._secret, self.mid)}\n")
        (self.state / "rsyncd.conf").write_text(self._config())
        for _ in range(5):
            port = _free_port(self.host, self._ports)
            proc = subprocess.Popen(
                [
                    "rsync",
                    "--daemon",
                    "--no-detach",
                    f"--config={self.state / 'rsyncd.conf'}",
                    "--port",
                    str(port),
                    "--address",
                    self.host,
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            if self._listening(proc, port):
                # Reap it when it ends, whoever stops it.
                threading.Thread(target=proc.wait, daemon=True, name="ferry-rsyncd").start()
                daemon = _Daemon(proc.pid, procs.start_ticks(proc.pid), port)
                (self.state / "daemon.json").write_text(json.dumps(asdict(daemon)))
                return port, MODULE
        raise CapabilityError(
            f"rsync daemon would not start on {self.host}; see {self.state / 'rsyncd.log'}"
        )

    def stop(self) -> None:
        """Stop the daemon, restore munged symlinks and delete the state; safe to repeat."""
        running = self._running()
        if running is not None:
            # The daemon and its connections. Not SIGTERM: rsync's handler sleeps
            # 400 ms, inside the freeze window here; the daemon keeps nothing
            # that needs flushing (a push it cuts short leaves only its temp
            # files, in a copy that is removed or pushed again).
            os.killpg(running.pid, signal.SIGKILL)
            deadline = time.monotonic() + 5
            while procs.alive(running.pid, running.ticks) and time.monotonic() < deadline:
                time.sleep(0.001)
        if not self._chroot:
            unmunge(self.root)
        shutil.rmtree(self.state, ignore_errors=True)

    def _config(self) -> str:
        s = self.state
        lines = [
            f"pid file = {s / 'rsyncd.pid'}",
            f"lock file = {s / 'rsyncd.lock'}",
            f"log file = {s / 'rsyncd.log'}",
            "reverse lookup = no",
            # Global only. rsync's many small messages otherwise wait on delayed ACKs.
            "socket options = TCP_NODELAY",
            f"[{MODULE}]",
            f"path = {self.root}",
            f"auth users = {self.mid}",
            f"secrets file = {s / 'secrets'}",
            "strict modes = yes",
            "read only = false",
            "write only = true",
            "list = false",
            f"use chroot = {'yes' if self._chroot else 'no'}",
            # A chroot already keeps symlinks in; without one, munge them (see stop()).
            f"munge symlinks = {'no' if self._chroot else 'yes'}",
            "numeric ids = yes",
            "max connections = 4",
            "timeout = 120",
        ]
        if os.geteuid() == 0:
            lines += ["uid = 0", "gid = 0"]  # keep owners: -a --numeric-ids
        if self._allow:
            lines += [f"hosts allow = {self._allow}", "hosts deny = *"]
        return "\n".join(lines) + "\n"

    def _listening(self, proc: subprocess.Popen[bytes], port: int) -> bool:
        """Wait until the daemon listens on ``port``; False if it gave up (port taken)."""
        log = self.state / "rsyncd.log"
        deadline = time.monotonic() + _START_S
        while time.monotonic() < deadline:
            text = log.read_text(errors="replace") if log.exists() else ""
            if re.search(
                rf"\[{proc.pid}\] rsyncd version \S+ starting, listening on port "
                rf"{port}\b",
                text,
            ):
                return True
            if proc.poll() is not None:
                return False
            time.sleep(0.005)
        proc.kill()
        proc.wait()
        return False

    def _running(self) -> _Daemon | None:
        try:
            daemon = _Daemon(**json.loads((self.state / "daemon.json").read_text()))
        except (OSError, ValueError, TypeError):
            return None
        return daemon if procs.alive(daemon.pid, daemon.ticks) else None


@dataclass(frozen=True)
class _Daemon:
    pid: int
    ticks: int | None
    port: int


def rsync_push(
    src_dir: Path,
    host: str,
    port: int,
    module: str,
    mid: str,
    secret: bytes,
    bandwidth_bps: float | None = None,
    *,
    timeout_s: float = 60,
) -> SyncStats:
    """Make the module ``module`` of the daemon at ``host:port`` a copy of ``src_dir``.

    Changed and new files are sent, files gone from ``src_dir`` are deleted
    there; owners, modes, times and symlinks are kept (``-a --numeric-ids``).
    ``bandwidth_bps`` (bytes/s) caps it. Raises TokenError if the daemon refuses
    the password, TransferError if the link fails (retry), NoSpace if the
    destination's disk is full, PermanentError otherwise.
    """
    src = Path(src_dir)
    if src.is_symlink() or not src.is_dir():
        raise BadRequest(f"cannot sync {src}: not a directory")
    _check_host(host)
    check_id("module", module)
    check_id("migration id", mid)
    if not 0 < port < 65536:
        raise BadRequest(f"bad rsync port {port}")
    netloc = f"[{host}]" if ":" in host else host
    argv = [
        "rsync",
        "-a",
        "--delete",
        "--numeric-ids",
        "--stats",
        "--no-human-readable",
        f"--timeout={max(1, round(timeout_s))}",
        "--contimeout=10",
        "--sockopts=TCP_NODELAY",
    ]  # with the daemon's: a small pass 180 -> 10 ms on loopback
    if bandwidth_bps:
        argv.append(f"--bwlimit={max(1, round(bandwidth_bps / 1024))}")  # KiB/s
    with tempfile.TemporaryDirectory(prefix="ferry-rsync-") as tmp:
        pw = Path(tmp) / "password"
        _write_private(pw, password(secret, mid))
        argv += [
            f"--password-file={pw}",
            f"{src.absolute()}/",
            f"rsync://{mid}@{netloc}:{port}/{module}/",
        ]
        started = time.monotonic()
        try:
            done = subprocess.run(
                argv,
                capture_output=True,
                text=True,
                stdin=subprocess.DEVNULL,
                env={**os.environ, "LC_ALL": "C"},
            )
        except FileNotFoundError as exc:
            raise CapabilityError("rsync not found: install it (apt-get install rsync)") from exc
    seconds = time.monotonic() - started
    if done.returncode != 0:
        raise _push_error(done.returncode, done.stderr, f"{host}:{port}")
    found = {k: int(v.replace(",", "")) for k, v in _STAT.findall(done.stdout)}
    return SyncStats(
        found.get("Total bytes sent", 0),
        found.get("Number of regular files transferred", 0),
        found.get("Number of deleted files", 0),
        seconds,
    )


def unmunge(root: Path) -> None:
    """Give every symlink under ``root`` that rsync munged its original value back.

    Only once no daemon writes there: a munged link cannot be followed, a
    restored one can.
    """
    for _, dirs, names, dir_fd in os.fwalk(root):  # does not follow symlinks
        for name in [*dirs, *names]:
            try:
                value = os.readlink(name, dir_fd=dir_fd)
            except OSError:
                continue  # not a symlink
            if not value.startswith(MUNGED):
                continue
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            temp = f".ferry-unmunge-{secrets.token_hex(8)}"
            os.symlink(value[len(MUNGED) :], temp, dir_fd=dir_fd)
            os.chown(temp, st.st_uid, st.st_gid, dir_fd=dir_fd, follow_symlinks=False)
            os.utime(
                temp, ns=(st.st_atime_ns, st.st_mtime_ns), dir_fd=dir_fd, follow_symlinks=False
            )
            os.replace(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)


def _push_error(code: int, stderr: str, where: str) -> Exception:
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    detail = next((ln for ln in lines if "@ERROR" in ln), lines[0] if lines else f"exit {code}")
    what = f"rsync to {where} failed (exit {code}): {detail}"
    if "auth failed" in stderr:
        return TokenError(what)
    if "access denied" in stderr or "Unknown module" in stderr:  # how it hides from other hosts
        return TokenError(f"{what} (is this node the allowed source?)")
    if "No space left on device" in stderr or "Disk quota exceeded" in stderr:
        return NoSpace(what)
    if code in _TRANSIENT or "Connection refused" in stderr:
        return TransferError(what)
    return PermanentError(what)


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        os.fchmod(fd, 0o600)
        f.write(text)


def _free_port(host: str, ports: tuple[int, int] | None = None) -> int:
    """A port free on ``host`` now: any, or the first free one in ``ports`` (first, last)."""
    first, last = ports or (0, 0)
    for candidate in range(first, last + 1):
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
            try:
                s.bind((host, candidate))
            except OSError:
                continue  # taken: another migration's daemon, or anything else
            port: int = s.getsockname()[1]
            return port
    raise CapabilityError(
        f"no free port for an rsync daemon on {host} in {first}-{last}: "
        "too many migrations at once for sync_ports"
    )


def _check_root(root: Path) -> Path:
    root = Path(root)
    if not root.is_absolute() or root.is_symlink() or not root.is_dir():
        raise BadRequest(f"cannot sync into {root}: want an absolute path to a directory")
    return _check_conf_path(root.resolve())


def _check_conf_path(path: Path) -> Path:
    if any(ord(c) < 32 or c == "%" for c in str(path)):  # rsyncd.conf expands %VAR%
        raise BadRequest(f"cannot use {str(path)!r} for rsync: control characters or '%' in it")
    return path


def _check_host(host: str) -> None:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if not _HOST.fullmatch(host):
            raise BadRequest(f"bad host {host!r:.80}: want an IP address or a host name") from None


def _check_address(address: str) -> None:
    try:
        ipaddress.ip_address(address)
    except ValueError:
        raise BadRequest(f"bad source address {address!r:.80}: want an IP address") from None
