"""Start a ferry container: a process tree in new pid, uts and ipc namespaces.

Run as ``python -m workers.runtimes.launch --name N --dir D --log L -- CMD ...``; prints
the host pid of the container's init (pid 1 inside) and exits. The init is a
session leader inside its namespaces, holds no inherited fds, and has its
stdio on the log: what CRIU needs to dump it cleanly. It is a separate program
so that the fork happens in a fresh single-threaded process, never inside a
threaded worker.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import sys

CLONE_NEWPID = 0x20000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ferry-launch")
    parser.add_argument("--name", required=True)
    parser.add_argument("--dir", required=True)
    parser.add_argument("--log", required=True)
    parser.add_argument("cmd", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        parser.error("no command given")
    libc = ctypes.CDLL(None, use_errno=True)
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:
        os.close(read_end)
        if libc.unshare(CLONE_NEWPID | CLONE_NEWUTS | CLONE_NEWIPC) != 0:
            os.write(write_end, f"error unshare: {os.strerror(ctypes.get_errno())}".encode())
            os._exit(1)
        init = os.fork()  # the first child after unshare is pid 1 of the new namespace
        if init:
            os.write(write_end, str(init).encode())
            os._exit(0)
        os.close(write_end)
        _become_init(libc, args.name, args.dir, args.log, cmd)
    os.close(write_end)
    os.waitpid(child, 0)
    answer = os.read(read_end, 256).decode()
    if not answer.isdigit():
        print(answer or "error: launcher failed", file=sys.stderr)
        return 1
    print(answer)
    return 0


def _become_init(libc: ctypes.CDLL, name: str, workdir: str, log: str, cmd: list[str]) -> None:
    """In the new namespaces: session leader, hostname, clean fds, then exec."""
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
        os.execvp(cmd[0], cmd)
    except OSError as exc:
        os.write(2, f"ferry: cannot start {cmd[0]}: {exc}\n".encode())
    os._exit(127)


if __name__ == "__main__":
    sys.exit(main())
