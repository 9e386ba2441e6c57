"""ferry's data plane against a raw TCP copy, over loopback, in one run.

    .venv/bin/python benchmarks/transfer.py [--sizes 64M,256M,1G] [--repeat 5]
        [--dir /dev/shm] [--json docs/benchmarks/transfer.json]

For each size, a file is copied to a receiver that writes it to disk, first
by the baseline (``sendfile`` to a plain receiver: ``recv_into`` + ``write``,
nothing checked) then by ferry (``send_files`` to a ``TransferServer``: token,
BLAKE3 on both ends, temp file and rename), alternating, ``--repeat`` times;
medians are reported. Both ends run in this process, so CPU time
(``time.process_time``) is sender plus receiver, and peak RSS (VmHWM, reset
before each run) is both ends' together.

The senders take only an address: a run over a real link would hand
:func:`run` targets on another node instead of :func:`local_targets`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import secrets
import socket
import statistics
import struct
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from workers.tokens import issue_token
from workers.transfer import TransferServer, send_files

BUFFER = 4 << 20
SECRET = secrets.token_bytes(32)
Send = Callable[[tuple[str, int], Path], None]


@dataclass(frozen=True)
class Sample:
    seconds: float
    cpu_s: float
    peak_rss_mb: float


@dataclass(frozen=True)
class Row:
    size_mb: int
    raw_mb_s: float
    ferry_mb_s: float
    ratio: float
    raw_cpu_s_per_gb: float
    ferry_cpu_s_per_gb: float
    raw_peak_rss_mb: float
    ferry_peak_rss_mb: float


class RawReceiver:
    """The baseline: reads an 8-byte length, then that many bytes into a file; acks one byte."""

    def __init__(self, directory: Path) -> None:
        self._dir = directory
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.address: tuple[str, int] = self._listener.getsockname()[:2]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        view = memoryview(bytearray(BUFFER))
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            with conn:
                (size,) = struct.unpack(">Q", conn.recv(8, socket.MSG_WAITALL))
                fd = os.open(self._dir / "raw.out", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                try:
                    while size:
                        n = conn.recv_into(view, min(size, BUFFER))
                        done = 0
                        while done < n:
                            done += os.write(fd, view[done:n])
                        size -= n
                finally:
                    os.close(fd)
                conn.sendall(b"k")

    def close(self) -> None:
        self._listener.close()


def raw_send(address: tuple[str, int], path: Path) -> None:
    with socket.create_connection(address) as sock, path.open("rb") as f:
        sock.sendall(struct.pack(">Q", path.stat().st_size))
        sock.sendfile(f)
        sock.recv(1)


def ferry_send(address: tuple[str, int], path: Path) -> None:
    migration = "bench-" + secrets.token_hex(4)  # a new id each run: nothing to resume
    token = issue_token(SECRET, migration, "bench", "bench", now=time.time())
    send_files(address, lambda: token, migration, [(path, "pages-1.img")])


@dataclass(frozen=True)
class Target:
    """Where one method's copies go, and how to empty it between runs."""

    address: tuple[str, int]
    cleanup: Callable[[], None]


@contextlib.contextmanager
def local_targets(workdir: Path) -> Iterator[dict[str, Target]]:
    """Both receivers in this process, on 127.0.0.1, writing under ``workdir``.

    A ``--via`` run would yield receivers on another node instead (their
    addresses, and a cleanup that asks that node to delete the copies).
    """
    raw_dir, ferry_dir = workdir / "raw", workdir / "ferry"
    raw_dir.mkdir()
    raw = RawReceiver(raw_dir)
    server = TransferServer(ferry_dir, SECRET, "bench")
    server.start()
    try:
        yield {
            "raw": Target(raw.address, lambda: _clear(raw_dir)),
            "ferry": Target(server.address, lambda: _clear(ferry_dir)),
        }
    finally:
        server.stop()
        raw.close()


def measure(send: Send, target: Target, path: Path) -> Sample:
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    cpu, wall = time.process_time(), time.perf_counter()
    send(target.address, path)
    sample = Sample(time.perf_counter() - wall, time.process_time() - cpu, _peak_rss_mb())
    target.cleanup()
    return sample


def run(sizes: list[int], repeat: int, workdir: Path, targets: dict[str, Target]) -> list[Row]:
    """Copy a file of each size to each target, alternating, ``repeat`` times."""
    rows = []
    for size in sizes:
        src = _make_file(workdir / f"src-{size}", size)
        raw: list[Sample] = []
        ferry: list[Sample] = []
        for _ in range(repeat):
            raw.append(measure(raw_send, targets["raw"], src))
            ferry.append(measure(ferry_send, targets["ferry"], src))
        src.unlink()
        rows.append(_row(size, raw, ferry))
        _print_row(rows[-1])
    return rows


def _row(size: int, raw: list[Sample], ferry: list[Sample]) -> Row:
    r, f = _median(raw), _median(ferry)
    gb = size / 1e9
    # Each ferry run is paired with the raw run just before it, under the same
    # background load: the median of the pairs' ratios is steadier than the
    # ratio of the medians.
    ratio = statistics.median(a.seconds / b.seconds for a, b in zip(raw, ferry))
    return Row(
        size_mb=size >> 20,
        raw_mb_s=round(size / 1e6 / r.seconds, 1),
        ferry_mb_s=round(size / 1e6 / f.seconds, 1),
        ratio=round(ratio, 3),
        raw_cpu_s_per_gb=round(r.cpu_s / gb, 3),
        ferry_cpu_s_per_gb=round(f.cpu_s / gb, 3),
        raw_peak_rss_mb=r.peak_rss_mb,
        ferry_peak_rss_mb=f.peak_rss_mb,
    )


def _median(samples: list[Sample]) -> Sample:
    return Sample(
        statistics.median(s.seconds for s in samples),
        statistics.median(s.cpu_s for s in samples),
        max(s.peak_rss_mb for s in samples),
    )


HEADER = (
    f"{'size':>7} {'raw MB/s':>9} {'ferry MB/s':>10} {'ratio':>6} "
    f"{'raw CPU s/GB':>12} {'ferry CPU s/GB':>14} {'raw RSS MB':>10} {'ferry RSS MB':>12}"
)


def _print_row(row: Row) -> None:
    print(
        f"{row.size_mb:>5}MB {row.raw_mb_s:>9.0f} {row.ferry_mb_s:>10.0f} {row.ratio:>6.2f} "
        f"{row.raw_cpu_s_per_gb:>12.2f} {row.ferry_cpu_s_per_gb:>14.2f} "
        f"{row.raw_peak_rss_mb:>10.0f} {row.ferry_peak_rss_mb:>12.0f}",
        flush=True,
    )


def _make_file(path: Path, size: int) -> Path:
    block = os.urandom(16 << 20)
    with path.open("wb") as f:
        for offset in range(0, size, len(block)):
            f.write(block[: size - offset])
    return path


def _clear(directory: Path) -> None:
    for path in sorted(directory.rglob("*"), reverse=True):
        if path.is_dir() and not path.is_symlink():
            path.rmdir()
        else:
            path.unlink()


def _peak_rss_mb() -> float:
    status = Path("/proc/self/status").read_text()
    match = re.search(r"VmHWM:\s+(\d+) kB", status)
    return round(int(match.group(1)) / 1024, 1) if match else float("nan")


def _size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(text[:-1]) * units[text[-1].upper()] if text[-1].isalpha() else int(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--sizes", default="64M,256M,1G")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--dir", type=Path, default=Path("/dev/shm"))
    parser.add_argument("--json", type=Path, default=Path("docs/benchmarks/transfer.json"))
    args = parser.parse_args()
    sizes = [_size(s) for s in args.sizes.split(",")]
    print(f"loopback, {os.cpu_count()} CPUs, files in {args.dir}, median of {args.repeat}")
    print(HEADER)
    load_before = os.getloadavg()[0]
    with (
        tempfile.TemporaryDirectory(dir=args.dir, prefix="ferry-bench-") as work,
        local_targets(Path(work)) as targets,
    ):
        rows = run(sizes, args.repeat, Path(work), targets)
    # Both ends share this machine's CPUs: other work on it moves the numbers.
    load = (round(load_before, 2), round(os.getloadavg()[0], 2))
    print(f"1-minute load average before, after: {load[0]}, {load[1]}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "what": "ferry send_files vs raw sendfile copy, loopback, both ends in one process",
        "cpus": os.cpu_count(),
        "dir": str(args.dir),
        "repeat": args.repeat,
        "load_average_before_after": load,
        "rows": [asdict(r) for r in rows],
    }
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
