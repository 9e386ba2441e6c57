"""ferry's data plane against raw TCP and rsync, over loopback and shaped testbed links.

    .venv/bin/python benchmarks/transfer.py                         # loopback, random (~3 min)
    .venv/bin/python benchmarks/transfer.py --links 1gbit --sizes 64M,256M --kinds random,text
    .venv/bin/python benchmarks/transfer.py --links 100mbit --sizes 256M --kinds random,text \\
        --repeat 1                                                  # (~6 min)
        [--methods raw,ferry,zstd,rsync] [--repeat 3] [--budget-s 540] [--wait-testbed 120]
        [--dir /dev/shm] [--json docs/benchmarks/transfer.json]
    .venv/bin/python benchmarks/transfer.py --markdown              # the saved table

One file of each size and kind (``random``: incompressible; ``text``: lines of
random words, which zstd shrinks to about 30 %; ``zeros``) is copied by each
method in turn, ``--repeat`` times, and medians are reported:

- ``raw``: ``sendfile`` to a plain receiver (``recv_into`` + ``write``), nothing checked;
- ``ferry``: ``send_files`` uncompressed (token, BLAKE3 on both ends, temp file, rename);
- ``zstd``: ``send_files`` with zstd compression forced;
- ``rsync``: ``workers.dirsync.rsync.rsync_push`` into a ``RsyncTarget`` daemon (empty target).

The receivers run in a helper process, the senders in another: on a testbed
link, each in its node's network namespace, so the bytes cross two
tbf-shaped veths (no added delay). ``ratio`` is raw's time over the method's
(1.0 = as fast as raw TCP), each run paired with the raw run just before it.
CPU s/GB is both ends' CPU time (threads and rsync's processes included) per
GB of file. Peak RSS is each end's: VmHWM, reset before each run, for the
Python ends; the rsync client's max RSS, and the rsync daemon's processes'
sampled every 20 ms, for rsync. ``auto`` is what ``send_files(compression=
"auto")`` would choose for that data at the link's rate. Cells that would not
fit in ``--budget-s`` (by the link's rate) are skipped, and say so. Rows of
links, sizes and kinds not measured in a run are kept from the JSON file.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import resource
import secrets
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tasks.core.transport import Route, codec
from workers.dataplane.tokens import issue_token
from workers.dataplane.transfer import (
    TransferServer,
    compressor_bps,
    is_loopback,
    sample_ratio,
    send_files,
)
from workers.dirsync.rsync import RsyncTarget, rsync_push

BUFFER = 4 << 20
# One secret for this run and its helper processes (they inherit the environment).
SECRET = bytes.fromhex(os.environ.setdefault("FERRY_BENCH_SECRET", secrets.token_hex(32)))
RATES = {"loopback": None, "1gbit": 125e6, "100mbit": 12.5e6}  # bytes/s of the link
GUESS_BPS = {"loopback": 600e6, "1gbit": 110e6, "100mbit": 11.5e6}  # to plan the budget
METHODS = ("raw", "ferry", "zstd", "rsync")


# -- the receiving end -----------------------------------------------------------------
class RawReceiver:
    """The baseline: reads an 8-byte length, then that many bytes into a file; acks one byte."""

    def __init__(self, directory: Path, host: str) -> None:
        self._dir = directory
        self._listener = socket.create_server((host, 0))
        self.port: int = self._listener.getsockname()[1]
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


class RsyncWatch:
    """Peak RSS of the rsync processes of one process group, sampled every 50 ms.

    Sampling reads /proc, which costs CPU in this process: ``end`` says how
    much, for the caller to take off what it measures.
    """

    def __init__(self, pgid: int) -> None:
        self.pgid, self.peak_kb, self.spent, self._on = pgid, 0, 0.0, threading.Event()
        threading.Thread(target=self._sample, daemon=True).start()

    def begin(self) -> None:
        self._on.set()

    def end(self) -> tuple[float, float]:
        """The peak RSS (MB) and the sampling's CPU (s) since ``begin``; both start again."""
        self._on.clear()
        time.sleep(0.06)  # let a sample in progress finish and count its CPU
        out = (self.peak_kb / 1024, self.spent)
        self.peak_kb, self.spent = 0, 0.0
        return out

    def _sample(self) -> None:
        while True:
            self._on.wait()
            cpu = time.thread_time()
            total = 0
            for proc in Path("/proc").glob("[0-9]*"):
                try:
                    name, rest = (proc / "stat").read_text().rsplit(")", 1)
                    if name.endswith("(rsync") and int(rest.split()[2]) == self.pgid:
                        total += int((proc / "statm").read_text().split()[1])
                except (OSError, ValueError, IndexError):
                    continue
            self.peak_kb = max(self.peak_kb, total * os.sysconf("SC_PAGE_SIZE") // 1024)
            self.spent += time.thread_time() - cpu
            time.sleep(0.05)


def daemon_cpu_s(pid: int) -> float:
    """CPU time of a process and of the children it has reaped."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def receivers(host: str, where: Path) -> None:
    """The receiving helper: serve until stdin closes; ``begin``/``end`` bracket one run."""
    for sub in ("raw", "ferry", "rsync"):
        (where / sub).mkdir(parents=True)
    raw = RawReceiver(where / "raw", host)
    server = TransferServer(where / "ferry", SECRET, "bench", host=host)
    server.start()
    target = RsyncTarget(where / "rsync", "bench", SECRET, host, state=where / "rsyncd")
    port, module = target.start()
    daemon = json.loads((where / "rsyncd" / "daemon.json").read_text())["pid"]
    watch = RsyncWatch(daemon)  # the daemon leads its own process group
    print(
        json.dumps({"raw": raw.port, "ferry": server.address[1], "rsync": port, "module": module}),
        flush=True,
    )
    cpu = 0.0
    for line in sys.stdin:
        if line.split()[0] == "begin":
            Path("/proc/self/clear_refs").write_text("5")  # VmHWM back to the current RSS
            if line.split()[1:] == ["rsync"]:
                watch.begin()
            cpu = time.process_time() + daemon_cpu_s(daemon)
            print("ok", flush=True)
        elif line.strip() == "end":
            rsync_rss, sampling = watch.end()
            time.sleep(0.05)  # let the daemon reap its connection (its CPU counts then)
            used = time.process_time() + daemon_cpu_s(daemon) - cpu - sampling
            print(
                json.dumps({"cpu_s": used, "rss_mb": peak_rss_mb(), "rsync_rss_mb": rsync_rss}),
                flush=True,
            )
        elif line.strip() == "clean":
            for sub in ("raw", "ferry", "rsync"):
                clear(where / sub)
            print("ok", flush=True)
    target.stop()
    server.stop()


# -- the sending end -------------------------------------------------------------------
class Peer:
    """The receiving helper, one line in, one line out."""

    def __init__(self, argv: list[str]) -> None:
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.ports: dict[str, Any] = json.loads(self.ask(None))

    def ask(self, line: str | None) -> str:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        if line is not None:
            self.proc.stdin.write(line + "\n")
            self.proc.stdin.flush()
        answer = self.proc.stdout.readline()
        if not answer:
            raise SystemExit("the receiving helper died")
        return answer

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def send(method: str, host: str, peer: Peer, path: Path) -> int:
    """Copy ``path`` by ``method``; return the bytes that crossed the wire (file bytes)."""
    if method == "raw":
        with socket.create_connection((host, peer.ports["raw"])) as sock, path.open("rb") as f:
            sock.sendall(struct.pack(">Q", path.stat().st_size))
            sock.sendfile(f)
            sock.recv(1)
        return path.stat().st_size
    if method == "rsync":
        rsync_push(path.parent, host, peer.ports["rsync"], peer.ports["module"], "bench", SECRET)
        return path.stat().st_size
    migration = "bench-" + secrets.token_hex(4)  # a new id each run: nothing to resume
    token = issue_token(SECRET, migration, "bench", "bench", now=time.time())
    codec = "zstd" if method == "zstd" else "none"
    stats = send_files(
        (host, peer.ports["ferry"]),
        lambda: token,
        migration,
        [(path, "pages-1.img")],
        compression=codec,
    )
    return stats.bytes


def measure(method: str, host: str, peer: Peer, path: Path, watch: RsyncWatch) -> dict[str, float]:
    peer.ask(f"begin {method}")
    Path("/proc/self/clear_refs").write_text("5")
    if method == "rsync":
        watch.begin()
    before = _children_cpu()
    cpu, wall = time.process_time(), time.perf_counter()
    wire = send(method, host, peer, path)
    seconds = time.perf_counter() - wall
    rsync_rss, sampling = watch.end()
    sent_cpu = time.process_time() - cpu + _children_cpu() - before - sampling
    far = json.loads(peer.ask("end"))
    peer.ask("clean")
    return {
        "seconds": seconds,
        "cpu_s": sent_cpu + far["cpu_s"],
        "wire_mb": wire / 1e6,
        "sender_rss_mb": rsync_rss if method == "rsync" else peak_rss_mb(),
        "receiver_rss_mb": far["rsync_rss_mb"] if method == "rsync" else far["rss_mb"],
    }


def senders(link: str, host: str, dst_netns: str | None, args: argparse.Namespace) -> None:
    """The sending helper: every cell of ``link`` that fits the budget; rows on stdout."""
    into = ["ip", "netns", "exec", dst_netns] if dst_netns else []
    work = Path(tempfile.mkdtemp(prefix="ferry-bench-", dir=args.dir))
    peer = Peer(
        [
            *into,
            sys.executable,
            __file__,
            "--role",
            "receivers",
            "--host",
            host,
            "--dir",
            str(work / "dst"),
        ]
    )
    deadline = time.monotonic() + args.budget_s
    watch = RsyncWatch(os.getpgid(0))  # the rsync clients run in this process group
    rows = []
    try:
        for size in [parse_size(s) for s in args.sizes.split(",")]:
            for kind in args.kinds.split(","):
                methods = args.methods.split(",")
                cost = args.repeat * len(methods) * size / GUESS_BPS[link]
                if time.monotonic() + cost > deadline:
                    rows.append(
                        {
                            "link": link,
                            "kind": kind,
                            "size_mb": size >> 20,
                            "skipped": f"~{cost:.0f} s would not fit in the budget",
                        }
                    )
                    print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
                    continue
                path = make_file(work / "src" / f"{kind}-{size}" / "pages-1.img", size, kind)
                samples: dict[str, list[dict[str, float]]] = {m: [] for m in methods}
                for _ in range(args.repeat):
                    for method in methods:
                        samples[method].append(measure(method, host, peer, path, watch))
                way = Route(is_loopback(host), RATES[link], compressor_bps())
                auto = codec("auto", way, sample_ratio([path]))
                rows += [
                    row(link, kind, size, m, samples[m], samples.get("raw"), auto) for m in methods
                ]
                for r in rows[-len(methods) :]:
                    print(json.dumps(r), file=sys.stderr, flush=True)
                shutil.rmtree(path.parent)
    finally:
        peer.close()
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(rows))


def row(
    link: str,
    kind: str,
    size: int,
    method: str,
    samples: list[dict[str, float]],
    raw: list[dict[str, float]] | None,
    auto: str,
) -> dict[str, Any]:
    seconds = statistics.median(s["seconds"] for s in samples)
    out: dict[str, Any] = {
        "link": link,
        "kind": kind,
        "size_mb": size >> 20,
        "method": method,
        "mb_s": round(size / 1e6 / seconds, 1),
        "ratio": None,
        "wire_mb": round(statistics.median(s["wire_mb"] for s in samples), 1),
        "cpu_s_per_gb": round(statistics.median(s["cpu_s"] for s in samples) / (size / 1e9), 3),
        "sender_rss_mb": round(max(s["sender_rss_mb"] for s in samples), 1),
        "receiver_rss_mb": round(max(s["receiver_rss_mb"] for s in samples), 1),
        "auto": auto,
        "runs": len(samples),
    }
    if raw is not None:  # each run against the raw run just before it, under the same load
        out["ratio"] = round(
            statistics.median(
                r["seconds"] / s["seconds"] for r, s in zip(raw, samples, strict=False)
            ),
            3,
        )
    return out


# -- helpers ---------------------------------------------------------------------------
def make_file(path: Path, size: int, kind: str) -> Path:
    path.parent.mkdir(parents=True)
    words = [os.urandom(4).hex() for _ in range(3000)]
    rng = random.Random(size)
    with path.open("wb") as f:
        done = 0
        while done < size:
            if kind == "random":
                block = os.urandom(16 << 20)
            elif kind == "text":
                block = " ".join(rng.choices(words, k=200_000)).encode()
            else:
                block = bytes(16 << 20)
            f.write(block[: size - done])
            done += min(len(block), size - done)
    return path


def clear(directory: Path) -> None:
    for path in sorted(directory.rglob("*"), reverse=True):
        if path.is_dir() and not path.is_symlink():
            path.rmdir()
        else:
            path.unlink()


def peak_rss_mb() -> float:
    status = Path("/proc/self/status").read_text()
    match = re.search(r"VmHWM:\s+(\d+) kB", status)
    return round(int(match.group(1)) / 1024, 1) if match else float("nan")


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def parse_size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(text[:-1]) * units[text[-1].upper()] if text[-1].isalpha() else int(text)


# -- the run ---------------------------------------------------------------------------
def run_link(link: str, args: argparse.Namespace, bed: Any) -> list[dict[str, Any]]:
    common = [
        "--sizes",
        args.sizes,
        "--kinds",
        args.kinds,
        "--methods",
        args.methods,
        "--repeat",
        str(args.repeat),
        "--budget-s",
        str(args.budget_s),
        "--dir",
        args.dir,
    ]
    if bed is None:
        argv = [
            sys.executable,
            __file__,
            "--role",
            "senders",
            "--link",
            link,
            "--host",
            "127.0.0.1",
            *common,
        ]
    else:
        for node in bed.nodes:
            bed.shape(node, link)
        argv = [
            "ip",
            "netns",
            "exec",
            f"{bed.prefix}-node1",
            sys.executable,
            __file__,
            "--role",
            "senders",
            "--link",
            link,
            "--host",
            bed.address("node2"),
            "--dst-netns",
            f"{bed.prefix}-node2",
            *common,
        ]
    done = subprocess.run(argv, stdout=subprocess.PIPE, text=True, check=True, cwd=ROOT)
    rows: list[dict[str, Any]] = json.loads(done.stdout)
    return rows


HEADER = (
    "| link | kind | size | method | MB/s | ratio to raw | wire MB | CPU s/GB | "
    "sender RSS MB | receiver RSS MB | auto |\n"
    "| --- | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"
)


def markdown(report: dict[str, Any]) -> str:
    lines = [HEADER]
    for r in report["rows"]:
        if "skipped" in r:
            lines.append(
                f"| {r['link']} | {r['kind']} | {r['size_mb']} MB | skipped: {r['skipped']} |"
            )
            continue
        ratio = "" if r["ratio"] is None else f"{r['ratio']:.2f}"
        lines.append(
            f"| {r['link']} | {r['kind']} | {r['size_mb']} MB | {r['method']} | {r['mb_s']:.0f} "
            f"| {ratio} | {r['wire_mb']:.0f} | {r['cpu_s_per_gb']:.2f} | "
            f"{r['sender_rss_mb']:.0f} | {r['receiver_rss_mb']:.0f} | {r['auto']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="benchmarks/transfer.py", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--sizes", default="64M,256M,1G")
    parser.add_argument("--kinds", default="random", help="random,text,zeros")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--links", default="loopback", help="loopback,1gbit,100mbit")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--budget-s", type=float, default=540, help="per link")
    parser.add_argument("--wait-testbed", type=float, default=120)
    parser.add_argument("--dir", default="/dev/shm" if Path("/dev/shm").is_dir() else "/tmp")
    parser.add_argument("--json", type=Path, default=ROOT / "docs/benchmarks/transfer.json")
    parser.add_argument("--markdown", action="store_true", help="print the saved JSON")
    parser.add_argument("--role", choices=["senders", "receivers"], help=argparse.SUPPRESS)
    parser.add_argument("--link", help=argparse.SUPPRESS)
    parser.add_argument("--host", help=argparse.SUPPRESS)
    parser.add_argument("--dst-netns", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.role == "receivers":
        receivers(args.host, Path(args.dir))
        return 0
    if args.role == "senders":
        senders(args.link, args.host, args.dst_netns, args)
        return 0
    if args.markdown:
        print(markdown(json.loads(args.json.read_text())))
        return 0
    links = args.links.split(",")
    if any(link not in RATES for link in links):
        parser.error(f"--links: choose from {', '.join(RATES)}")
    load_before = os.getloadavg()[0]
    rows = run_link("loopback", args, None) if "loopback" in links else []
    shaped = [link for link in links if link != "loopback"]
    if shaped:
        if os.geteuid() != 0:
            print("error: the testbed needs root", file=sys.stderr)
            return 2
        from tests.e2e.netcluster import SUBNET, unique_prefix, wait_subnet_free
        from tests.testbed.cluster import Testbed

        holder = wait_subnet_free(args.wait_testbed)
        if holder:
            print(
                f"error: another testbed holds {SUBNET}.0/24 (on {holder}); not measured: "
                f"{', '.join(shaped)}",
                file=sys.stderr,
            )
        else:
            with Testbed(unique_prefix("ft"), nodes=2, subnet=SUBNET, delay_ms=0) as bed:
                for link in shaped:
                    rows += run_link(link, args, bed)
    load = (round(load_before, 2), round(os.getloadavg()[0], 2))
    key = ("link", "kind", "size_mb", "method")
    measured = {tuple(r.get(k) for k in key) for r in rows}
    cells = {(r["link"], r["kind"], r["size_mb"]) for r in rows}
    kept = []
    if args.json.exists():
        old = json.loads(args.json.read_text())
        kept = [
            r
            for r in old.get("rows", [])
            if "link" in r
            and tuple(r.get(k) for k in key) not in measured
            and (r["link"], r["kind"], r["size_mb"]) not in cells
        ]
    order = {link: i for i, link in enumerate(RATES)}
    every = sorted(
        kept + rows,
        key=lambda r: (
            order[r["link"]],
            r["kind"],
            r["size_mb"],
            METHODS.index(r.get("method", "raw")),
        ),
    )
    report = {
        "what": "ferry (plain and zstd) vs raw TCP vs rsync; medians; see benchmarks/transfer.py",
        "cpus": os.cpu_count(),
        "dir": args.dir,
        "load_average_before_after": load,
        "rows": every,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
