"""Run one system call inside another process, by ptrace, and take back a file it opened.

A userfaultfd binds to the memory of the process that creates it (its ioctls
act on that mm whichever process issues them), so the dirty tracker makes the
target itself call ``userfaultfd(2)``, copies the new fd out with
``pidfd_getfd(2)`` and makes the target ``close(2)`` its own copy (CRIU cannot
dump a process that holds a userfaultfd, criu#2021).

How one call is injected, without writing to the target's text: seize one
thread, interrupt it, save its registers exactly (NT_PRSTATUS), point its PC at
a syscall instruction that is already mapped — one in the process's vDSO — with
the number and argument in place, single-step it, read the result, put the
registers back and detach. Nothing is poked into memory, so other threads
running the same code are never disturbed. A thread interrupted inside a
system call gets its registers back as they were and the kernel restarts that
call on detach, as after any ptrace stop (x86_64: ``orig_rax`` is set to -1
while the injected call runs so no restart logic touches it). A signal that
arrives meanwhile is handed back to the thread on detach.

The register layout is chosen by ``platform.machine()``: x86_64 and aarch64.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from workers.errors import CapabilityError, PermanentError

_libc = ctypes.CDLL(None, use_errno=True)
_libc.ptrace.restype = ctypes.c_long
_libc.ptrace.argtypes = (ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p)
_libc.syscall.restype = ctypes.c_long

PTRACE_CONT, PTRACE_SINGLESTEP, PTRACE_DETACH = 7, 9, 17
PTRACE_GETREGSET, PTRACE_SETREGSET = 0x4204, 0x4205
PTRACE_SEIZE, PTRACE_INTERRUPT = 0x4206, 0x4207
PTRACE_EVENT_STOP = 128
NT_PRSTATUS = 1
WALL = 0x40000000
O_CLOEXEC = 0o2000000  # the same on x86_64 and aarch64
UFFD_USER_MODE_ONLY = 1
SYS_PIDFD_OPEN, SYS_PIDFD_GETFD = 434, 438  # the generic numbers, x86_64's too
_stopped_s = 0.0  # see stopped_ms


@dataclass(frozen=True)
class Arch:
    """Where a machine keeps what an injected system call needs."""

    name: str
    nregs: int  # u64 words of NT_PRSTATUS
    pc: int  # register indexes
    nr: int  # the syscall number on entry
    arg0: int
    ret: int
    orig_nr: int | None  # x86_64's orig_rax: -1 keeps the restart logic away
    insn: bytes  # the syscall instruction
    align: int
    userfaultfd: int
    close: int


X86_64 = Arch("x86_64", 27, 16, 10, 14, 10, 15, b"\x0f\x05", 1, 323, 3)
AARCH64 = Arch("aarch64", 34, 32, 8, 0, 0, None, (0xD4000001).to_bytes(4, "little"), 4, 282, 57)
ARCHES = {"x86_64": X86_64, "amd64": X86_64, "aarch64": AARCH64, "arm64": AARCH64}


def arch() -> Arch:
    """This machine's layout; CapabilityError on one ferry cannot inject into."""
    try:
        return ARCHES[platform.machine().lower()]
    except KeyError:
        raise CapabilityError(
            f"no syscall injection for {platform.machine()}: the uffd-wp tracker runs on "
            "x86_64 and aarch64"
        ) from None


class _Iovec(ctypes.Structure):
    _fields_ = (("base", ctypes.c_void_p), ("len", ctypes.c_size_t))


def _ptrace(req: int, pid: int, addr: int = 0, data: int | ctypes.c_void_p | None = 0) -> int:
    res = _libc.ptrace(req, pid, ctypes.c_void_p(addr), data)
    if res == -1 and (err := ctypes.get_errno()):
        raise OSError(err, f"ptrace({req:#x}, {pid}): {os.strerror(err)}")
    return int(res)


def _regs(pid: int, a: Arch, regs: ctypes.Array[ctypes.c_uint64] | None = None) -> list[int]:
    buf = regs if regs is not None else (ctypes.c_uint64 * a.nregs)()
    iov = _Iovec(ctypes.cast(buf, ctypes.c_void_p), ctypes.sizeof(buf))
    req = PTRACE_SETREGSET if regs is not None else PTRACE_GETREGSET
    _ptrace(req, pid, NT_PRSTATUS, ctypes.cast(ctypes.pointer(iov), ctypes.c_void_p))
    return list(buf)


def _set_regs(pid: int, a: Arch, values: list[int]) -> None:
    _regs(pid, a, (ctypes.c_uint64 * a.nregs)(*(v & (1 << 64) - 1 for v in values)))


def syscall_site(pid: int, a: Arch) -> int:
    """The address of a syscall instruction in ``pid``'s vDSO."""
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        if line.endswith("[vdso]"):
            lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
            with open(f"/proc/{pid}/mem", "rb", buffering=0) as mem:
                mem.seek(lo)
                text = mem.read(hi - lo)
            at = text.find(a.insn)
            while at >= 0 and at % a.align:
                at = text.find(a.insn, at + 1)
            if at >= 0:
                return lo + at
    raise CapabilityError(f"process {pid} has no vDSO with a syscall instruction to borrow")


def _wait_stop(tid: int) -> tuple[int, int]:
    """Wait for ``tid``'s next ptrace stop: (stop signal, ptrace event)."""
    while True:
        _, status = os.waitpid(tid, WALL)
        if os.WIFEXITED(status) or os.WIFSIGNALED(status):
            raise PermanentError(f"process {tid} exited while a system call was injected")
        if os.WIFSTOPPED(status):
            return os.WSTOPSIG(status), status >> 16


def inject(pid: int, nr: int, arg0: int, a: Arch | None = None) -> int:
    """Make ``pid`` (its main thread) call syscall ``nr`` with one argument; its return value.

    A negative return is ``-errno``, as the kernel gave it.
    """
    a = a or arch()
    site = syscall_site(pid, a)
    global _stopped_s
    t0 = time.monotonic()
    _ptrace(PTRACE_SEIZE, pid)
    pending = 0  # a signal that arrived while the thread was ours
    try:
        _ptrace(PTRACE_INTERRUPT, pid)
        while True:
            sig, event = _wait_stop(pid)
            if event == PTRACE_EVENT_STOP:
                break
            pending = pending or sig  # a signal stop came first: deliver it later
            _ptrace(PTRACE_CONT, pid)
        saved = _regs(pid, a)
        regs = list(saved)
        regs[a.pc], regs[a.nr], regs[a.arg0] = site, nr, arg0
        if a.orig_nr is not None:
            regs[a.orig_nr] = -1
        _set_regs(pid, a, regs)
        while True:  # the step ends after the syscall instruction, with SIGTRAP
            _ptrace(PTRACE_SINGLESTEP, pid)
            sig, event = _wait_stop(pid)
            after = _regs(pid, a)
            if sig == signal.SIGTRAP and after[a.pc] == site + len(a.insn):
                break
            if sig != signal.SIGTRAP:
                pending = pending or sig
        result = after[a.ret]
        _set_regs(pid, a, saved)
    finally:
        try:
            _ptrace(PTRACE_DETACH, pid, 0, pending)
        except OSError as exc:
            if exc.errno != errno.ESRCH:
                raise
        _stopped_s += time.monotonic() - t0
    return result - (1 << 64) if result >= 1 << 63 else result


def stopped_ms() -> float:
    """How long the threads this process injected into were stopped, in all (ms)."""
    return _stopped_s * 1000


def take_fd(pid: int, fd: int) -> int:
    """A copy of ``pid``'s ``fd`` in this process (close-on-exec)."""
    pidfd = _checked(_libc.syscall(SYS_PIDFD_OPEN, pid, 0), "pidfd_open")
    try:
        return _checked(_libc.syscall(SYS_PIDFD_GETFD, pidfd, fd, 0), "pidfd_getfd")
    finally:
        os.close(pidfd)


def userfaultfd_of(pid: int) -> int:
    """A userfaultfd bound to ``pid``'s memory, held by this process only."""
    a = arch()
    fd = inject(pid, a.userfaultfd, O_CLOEXEC | UFFD_USER_MODE_ONLY, a)
    if fd < 0:
        raise CapabilityError(
            f"userfaultfd in process {pid} failed: {os.strerror(-fd)} "
            "(CONFIG_USERFAULTFD, vm.unprivileged_userfaultfd or CAP_SYS_PTRACE)"
        )
    try:
        return take_fd(pid, fd)
    finally:
        closed = inject(pid, a.close, fd, a)
        if closed < 0:
            raise PermanentError(f"could not close the userfaultfd left in process {pid}")


def _checked(res: int, what: str) -> int:
    if res < 0:
        err = ctypes.get_errno()
        raise PermanentError(f"{what} failed: {os.strerror(err)}")
    return int(res)
