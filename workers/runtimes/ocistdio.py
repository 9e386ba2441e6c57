"""Run ``runc run|restore --detach`` with the container's stdio on pipes this program keeps.

Run as ``python -m workers.runtimes.ocistdio --log L -- runc ...``. CRIU can
dump a file only through a mount the container sees, so a container's stdio
can't be a host log file; a pipe it can (runc hands the new pipes to CRIU on
restore as inherited fds). This program makes the pipes, runs runc with them,
prints ``ok`` once runc has detached and then, in a child that outlives it in
its own session, copies the container's output into the log until the
container's last writer is gone. stdin is a pipe already at EOF, as
/dev/null would be.
"""

from __future__ import annotations

import os
import subprocess
import sys


def main(argv: list[str]) -> int:
    if len(argv) < 4 or argv[0] != "--log" or argv[2] != "--":
        print("usage: ocistdio --log LOG -- RUNC ARGS...", file=sys.stderr)
        return 2
    log, cmd = argv[1], argv[3:]
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    os.close(in_w)
    proc = subprocess.run(cmd, stdin=in_r, stdout=out_w, stderr=out_w, check=False)
    os.close(in_r)
    os.close(out_w)
    if proc.returncode != 0:
        print(_drain(out_r).strip() or f"runc exited {proc.returncode}", file=sys.stderr)
        return 1
    if os.fork() == 0:
        os.setsid()
        _copy(out_r, log)
        os._exit(0)
    print("ok", flush=True)
    return 0


def _drain(fd: int) -> str:
    """What runc said (it has exited and nothing else writes here)."""
    os.set_blocking(fd, False)
    try:
        return os.read(fd, 65536).decode(errors="replace")
    except BlockingIOError:
        return ""


def _copy(fd: int, log: str) -> None:
    out = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
    null = os.open(os.devnull, os.O_RDWR)
    for std in (0, 1, 2):
        os.dup2(null, std)
    while chunk := os.read(fd, 65536):
        os.write(out, chunk)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
