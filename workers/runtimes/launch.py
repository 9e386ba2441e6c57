"""Start a ferry container: a process tree in new pid, uts and ipc namespaces.

Run as ``python -m workers.runtimes.launch --name N --dir D --log L [--netns F] -- CMD ...``
(``--netns``: join the network namespace bound on file F, its own; see
workers.runtimes.netns; without it the tree shares the node's network); prints
the host pid of the container's init (pid 1 inside) and exits. The init is a
session leader inside its namespaces, holds no inherited fds, and has its
stdio on the log: what CRIU needs to dump it cleanly. It is a separate program
so that the fork happens in a fresh single-threaded process, never inside a
threaded worker.

A container never inherits the worker's environment (it holds FERRY_SECRET
and the broker's and Redis's URLs with their passwords): the init execs with
:func:`container_env` only, the basics below plus what the container was
given (``--env KEY=VALUE``).
"""

from __future__ import annotations

import argparse
import ctypes
import os
import sys
from collections.abc import Mapping

CLONE_NEWPID = 0x20000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWNET = 0x40000000

# What every container starts with; nothing of the worker's own environment.
BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def container_env(name: str, workdir: str, given: Mapping[str, str]) -> dict[str, str]:
    """The whole environment of container ``name``: PATH, HOME (its working
    directory), HOSTNAME, LANG and TERM, then ``given`` on top.

    >>> container_env("web", "/c/web", {"PORT": "80"})["PORT"]
    '80'
    >>> sorted(container_env("web", "/c/web", {}))
    ['HOME', 'HOSTNAME', 'LANG', 'PATH', 'TERM']
    """
    env = {
        "PATH": BASE_PATH,
        "HOME": workdir,
        "HOSTNAME": name,
        "LANG": "C.UTF-8",
        "TERM": "dumb",
    }
    for key, value in given.items():
        if not key or "=" in key or "\0" in key or "\0" in value:
            raise ValueError(f"bad environment variable {key!r}")
        env[key] = value
    return env


def _pair(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"--env wants KEY=VALUE, not {text!r}")
    return key, value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ferry-launch")
    parser.add_argument("--name", required=True)
    parser.add_argument("--dir", required=True)
    parser.add_argument("--log", required=True)
    parser.add_argument("--env", type=_pair, action="append", default=[])
    parser.add_argument("--netns", default=None)
    parser.add_argument("cmd", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        parser.error("no command given")
    try:
        env = container_env(args.name, args.dir, dict(args.env))
    except ValueError as exc:
        parser.error(str(exc))
    libc = ctypes.CDLL(None, use_errno=True)
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:
        os.close(read_end)
        if args.netns and not _join_netns(libc, args.netns, write_end):
            os._exit(1)
        if libc.unshare(CLONE_NEWPID | CLONE_NEWUTS | CLONE_NEWIPC) != 0:
            os.write(write_end, f"error unshare: {os.strerror(ctypes.get_errno())}".encode())
            os._exit(1)
        init = os.fork()  # the first child after unshare is pid 1 of the new namespace
        if init:
            os.write(write_end, str(init).encode())
            os._exit(0)
        os.close(write_end)
        _become_init(libc, args.name, args.dir, args.log, cmd, env)
    os.close(write_end)
    os.waitpid(child, 0)
    answer = os.read(read_end, 256).decode()
    if not answer.isdigit():
        print(answer or "error: launcher failed", file=sys.stderr)
        return 1
    print(answer)
    return 0


def _join_netns(libc: ctypes.CDLL, path: str, report: int) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        os.write(report, f"error netns {path}: {exc.strerror}".encode())
        return False
    ok = bool(libc.setns(fd, CLONE_NEWNET) == 0)
    if not ok:
        os.write(report, f"error setns: {os.strerror(ctypes.get_errno())}".encode())
    os.close(fd)
    return ok


def _become_init(
    libc: ctypes.CDLL, name: str, workdir: str, log: str, cmd: list[str], env: dict[str, str]
) -> None:
    """In the new namespaces: session leader, hostname, clean fds and environment, then exec."""
    try:
        os.setsid()
        host = name.encode()
        libc.sethostname(host, len(host))
        out = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(out, 1)
        os.dup2(out, 2)
        os.closerange(3, os.sysconf("SC_OPEN_MAX"))
        os.chdir(workdir)
        os.execvpe(cmd[0], cmd, env)  # looks cmd[0] up on env's PATH
    except OSError as exc:
        os.write(2, f"ferry: cannot start {cmd[0]}: {exc}\n".encode())
    os._exit(127)


if __name__ == "__main__":
    sys.exit(main())
