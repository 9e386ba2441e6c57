"""The one adapter that talks to CRIU.

ferry drives the ``criu`` binary as a subprocess rather than through its RPC:
every call leaves its own log next to its images (quoted in errors), a dump
can be watched and killed like any process, and nothing needs pycriu, whose
protobuf pin (< 7) and ``images_dir_fd`` quirk in 4.1.1 would tie ferry to one
CRIU build. Its logs are read by :mod:`workers.criu.log`, its stats images by
:mod:`workers.criu.stats`.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from workers.criu.faultwatch import DAEMON_PID
from workers.criu.lazydump import seized_at
from workers.criu.log import PipedLog, explain
from workers.criu.stats import RESTORE_FIELDS, dump_stats, read_stats
from workers.errors import CriuError
from workers.records import DumpStats, RestoreStats

NET_KEY = "ferry-net"  # how a dump names the container's own network namespace, kept outside


def net_dump_args(net_ns: int) -> list[str]:
    """A tree in its own network namespace (inode ``net_ns``), left outside the images
    (the runtime rebuilds it), with its TCP connections: CRIU locks the namespace
    for the dump and leaves it locked, connections in repair mode, unless it rolls
    back; connections still in their handshake are left to the client to retry."""
    return [
        "--tcp-established",
        "--skip-in-flight",
        "--external",
        f"net[{net_ns}]:{NET_KEY}",
    ]


def net_restore_args(fd: int) -> list[str]:
    """Restore into the namespace open on ``fd`` (which the runtime built), with the TCP
    connections."""
    return ["--tcp-established", "--inherit-fd", f"fd[{fd}]:{NET_KEY}"]


@dataclass(frozen=True)
class Criu:
    """The criu binary and how to call it."""

    binary: str = "criu"
    timeout_s: float = 600.0

    def version(self) -> str:
        out = self._plain(["--version"])
        match = re.search(r"Version:\s*(\S+)", out)
        return match.group(1) if match else ""

    def check(self) -> tuple[bool, str]:
        """``criu check``: whether CRIU works on this kernel, and its complaint if not."""
        try:
            proc = subprocess.run(
                [self.binary, "check"], capture_output=True, text=True, timeout=60
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            return False, str(exc)
        text = (proc.stdout + proc.stderr).strip()
        return proc.returncode == 0, text.splitlines()[-1] if text else ""

    def feature(self, name: str) -> bool:
        try:
            proc = subprocess.run(
                [self.binary, "check", "--feature", name], capture_output=True, timeout=60
            )
        except (OSError, subprocess.TimeoutExpired):
            return False
        return proc.returncode == 0

    def dump(
        self,
        pid: int,
        images: Path,
        *,
        leave_running: bool = False,
        leave_stopped: bool = False,
        parent: Path | None = None,
        track_mem: bool = False,
        lazy: bool = False,
        pre: bool = False,
        ps_socket: int | None = None,
        net_ns: int | None = None,
    ) -> DumpStats:
        """Checkpoint the tree rooted at ``pid`` into ``images``.

        With ``ps_socket`` (a connected socket, see :class:`workers.dataplane.pagestream.Relay`)
        the pages and pagemaps go through it to a :meth:`page_server`; the
        rest still lands in ``images``. ``net_ns``: the tree has its own network
        namespace, with that inode (:func:`net_dump_args`).
        """
        images.mkdir(parents=True, exist_ok=True)
        op = "pre-dump" if pre else "dump"
        argv = [op, "-t", str(pid), "-D", str(images), "-o", f"{op}.log", "-v4"]
        if leave_running and not pre:
            argv.append("--leave-running")
        if leave_stopped:
            argv.append("--leave-stopped")
        if parent is not None:
            argv += ["--prev-images-dir", os.path.relpath(parent, images)]
        if track_mem:
            argv.append("--track-mem")
        if lazy:
            argv.append("--lazy-pages")
        if net_ns is not None and not pre:
            argv += net_dump_args(net_ns)
        fds: tuple[int, ...] = ()
        if ps_socket is not None:
            argv += ["--page-server", "--ps-socket", str(ps_socket)]
            fds = (ps_socket,)
        started = time.monotonic()
        self._run(op, argv, images / f"{op}.log", pass_fds=fds)
        wall = (time.monotonic() - started) * 1000
        return dump_stats(images, wall)

    def start_lazy_dump(
        self,
        pid: int,
        images: Path,
        address: str,
        port: int,
        parent: Path | None = None,
        net_ns: int | None = None,
        timeout_s: float = 60,
    ) -> tuple[subprocess.Popen[bytes], float]:
        """Start ``criu dump --lazy-pages``; return once the tree is frozen, dumped
        but for its pages, and CRIU's page server waits on ``address:port``.

        Returns the running dump and the wall time the tree froze at. The dump
        ends when every page has gone (exit 0), or fails and resumes the tree.
        ``net_ns``: as for :meth:`dump`; the network stays locked either way
        (CRIU unlocks it, if at all, before it serves the pages).
        """
        images.mkdir(parents=True, exist_ok=True)
        argv = [
            "dump",
            "-t",
            str(pid),
            "-D",
            str(images),
            "-o",
            "dump.log",
            "-v4",
            "--lazy-pages",
            "--leave-stopped",
            "--address",
            address,
            "--port",
            str(port),
        ]
        if parent is not None:
            argv += ["--prev-images-dir", os.path.relpath(parent, images), "--track-mem"]
        if net_ns is not None:
            argv += net_dump_args(net_ns)
        log = images / "dump.log"
        started = time.time()
        proc = self._spawn(argv)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            text = log.read_text(errors="replace") if log.exists() else ""
            if "Starting page server" in text:
                return proc, seized_at(text, started)
            if proc.poll() is not None:
                errno, detail = explain(log)
                raise CriuError("lazy dump", errno, log, detail)
            time.sleep(0.002)
        proc.kill()
        raise CriuError("lazy dump", 110, log, f"no page server after {timeout_s:.0f} s")

    def start_lazy_pages(self, images: Path, source: socket.socket) -> subprocess.Popen[bytes]:
        """Start ``criu lazy-pages`` to pull pages over ``source``, a connection to the
        source's page server (:func:`workers.dataplane.lazylink.open_lazy`) that it
        takes over: this call closes its own copy.

        Its log's times count from its start (:func:`workers.criu.log.fault_stalls`
        needs it in epoch seconds): ``lazy-pages.started`` keeps the time before
        its exec, some ms early on a busy node, and ``lazy-pages.bound`` when
        its socket was first seen, which its log also times
        (:func:`workers.criu.log.log_start`).
        """
        (images / "lazy-pages.started").write_text(f"{time.time():.6f}\n")
        with source:
            fd = source.fileno()
            argv = ["lazy-pages", "-D", str(images), "-o", "lazy-pages.log", "-v4"]
            proc = self._spawn([*argv, "--page-server", "--ps-socket", str(fd)], pass_fds=(fd,))
        (images / DAEMON_PID).write_text(f"{proc.pid}\n")  # workers.criu.faultwatch
        sock = images / "lazy-pages.socket"
        deadline = time.monotonic() + 10
        while not sock.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                errno, detail = explain(images / "lazy-pages.log")
                raise CriuError("lazy-pages", errno, images / "lazy-pages.log", detail)
            time.sleep(0.0005)
        (images / "lazy-pages.bound").write_text(f"{time.time():.6f}\n")
        return proc

    def page_server(self, images: Path, sock: int) -> PipedLog:
        """Start ``criu page-server`` on the connected socket ``sock``, writing into ``images``.

        It listens on nothing: it serves the one dump at the other end of
        ``sock`` and exits when that dump disconnects, 0 if all went well.
        Its log comes through a pipe (:class:`PipedLog`): the disk it fills
        is the one its log would be on, and a log cut mid-line by a full disk
        hides why it failed.
        """
        argv = ["page-server", "-D", str(images), "-o", "-", "-v4", "--ps-socket", str(sock)]
        try:
            proc = subprocess.Popen(
                [self.binary, *argv],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                pass_fds=(sock,),
            )
        except FileNotFoundError as exc:
            raise CriuError(
                argv[0], 2, None, f"{self.binary} not found: run ops/install-criu.sh"
            ) from exc
        return PipedLog(proc, images / "page-server.log")

    def _spawn(self, argv: list[str], pass_fds: tuple[int, ...] = ()) -> subprocess.Popen[bytes]:
        try:
            proc = subprocess.Popen(
                [self.binary, *argv],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
                pass_fds=pass_fds,
            )
        except FileNotFoundError as exc:
            raise CriuError(
                argv[0], 2, None, f"{self.binary} not found: run ops/install-criu.sh"
            ) from exc
        # Reap it when it ends, whoever waits for it by its log.
        threading.Thread(target=proc.wait, daemon=True, name=f"criu-{argv[0]}").start()
        return proc

    def restore(
        self, images: Path, *, extra: tuple[str, ...] = (), net_fd: int | None = None
    ) -> RestoreStats:
        """Restore the tree in ``images``, detached; returns its new host pid.

        ``net_fd``: an fd on the network namespace to restore it into
        (:func:`net_restore_args`)."""
        pidfile = images / "restore.pid"
        pidfile.unlink(missing_ok=True)
        argv = [
            "restore",
            "-D",
            str(images),
            "-d",
            "--pidfile",
            str(pidfile),
            "-o",
            "restore.log",
            "-v4",
            *extra,
        ]
        fds: tuple[int, ...] = ()
        if net_fd is not None:
            argv += net_restore_args(net_fd)
            fds = (net_fd,)
        started = time.monotonic()
        self._run("restore", argv, images / "restore.log", pass_fds=fds)
        wall = (time.monotonic() - started) * 1000
        pid = int(pidfile.read_text().strip())
        fields = read_stats(images / "stats-restore", 2, RESTORE_FIELDS)
        return RestoreStats(
            pid=pid,
            restore_ms=fields.get("restore_time", 0) / 1000,
            forking_ms=fields.get("forking_time", 0) / 1000,
            pages_restored=fields.get("pages_restored", 0),
            wall_ms=wall,
        )

    def _plain(self, argv: list[str]) -> str:
        try:
            return subprocess.run(
                [self.binary, *argv], capture_output=True, text=True, timeout=30
            ).stdout
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise CriuError(argv[0].lstrip("-"), 0, None, str(exc)) from exc

    def _run(self, op: str, argv: list[str], log: Path, pass_fds: tuple[int, ...] = ()) -> None:
        try:
            proc = subprocess.run(
                [self.binary, *argv],
                capture_output=True,
                text=True,
                timeout=self.timeout_s,
                stdin=subprocess.DEVNULL,
                pass_fds=pass_fds,
            )
        except FileNotFoundError as exc:
            raise CriuError(
                op, 2, None, f"{self.binary} not found: run ops/install-criu.sh"
            ) from exc
        except subprocess.TimeoutExpired as exc:
            raise CriuError(op, 110, log, f"no answer in {self.timeout_s:.0f} s") from exc
        if proc.returncode != 0:
            errno, detail = explain(log, proc.stderr)
            raise CriuError(op, errno, log, detail)
