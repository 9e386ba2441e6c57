"""A cold final dump two ways: local dump then ferry's send, or CRIU's page server.

    .venv/bin/python benchmarks/page_server.py                      # loopback (~2 min)
    .venv/bin/python benchmarks/page_server.py --links loopback,1gbit  # and the testbed (~5 min)
        [--sizes 64,256,1024] [--runs 3] [--tls] [--wait-testbed 120] [--dir /tmp]
        [--json docs/benchmarks/page_server.json]
    .venv/bin/python benchmarks/page_server.py --markdown           # the saved table

For each size (MiB of non-zero bytes held by a process in its own pid
namespace), the same process is dumped ``--runs`` times by each method, in
turn, with ``--leave-running``:

- ``local``: ``criu dump`` into a local images dir, then ``send_files`` to the
  destination's ``TransferServer`` (token, BLAKE3, temp file and rename).
- ``ps``: ferry's pages stream (``workers.dataplane.pagestream``): the relay dials the
  destination's ``TransferServer`` with a token, which hands the connection
  to a ``criu page-server --ps-socket``; BLAKE3 on both ends, checked before
  the dump counts as done; then the rest of the images (a few KiB) go by
  ``send_files``.
- ``ps-corked``: the same through CRIU's own TCP connection (``--address
  --port``), which holds its last command in a corked socket for the
  kernel's 200 ms cork ceiling while the tree is frozen.
- ``ps-tls`` (``--tls``): CRIU's own connection with ``--tls`` (GnuTLS, a
  throwaway CA and one certificate for both ends).

``frozen`` is CRIU's frozen time (tree frozen until CRIU lets it go),
``downtime`` is dump wall time plus send wall time: what a cold migration's
freeze window costs before the restore, which is the same for every method.
CRIU's own page servers are started before the freeze (``setup``, not
counted); ferry's is started by the session, inside the dump's time.

Rows of links not measured in a run are kept from the JSON file. Links:
``loopback`` runs both ends on 127.0.0.1; ``1gbit`` and ``100mbit``
put the source (the process, its dumps, its sends) in one testbed netns and
the destination (``TransferServer``, page server) in another, so the pages
cross two tbf-shaped veths. Images go to ``--dir`` on both ends; here that is
the VM's disk through the page cache: a Pi's SD card makes a local dump dearer.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.machine import machine
from workers.criu.adapter import Criu
from workers.criu.stats import dump_stats
from workers.dataplane.pagestream import Relay, check_pages
from workers.dataplane.tokens import issue_token
from workers.dataplane.transfer import TransferServer, send_files
from workers.records import PagesTarget

HOLDER = (
    "import os, sys, time\n"
    "hold = bytearray(os.urandom(int(sys.argv[1]) << 20))  # every page written, incompressible\n"
    "while True:\n"
    "    time.sleep(0.05)\n"
)
# One secret for this run and its helper processes (they inherit the environment).
SECRET = bytes.fromhex(os.environ.setdefault("FERRY_BENCH_SECRET", secrets.token_hex(32)))
METHODS = ("local", "ps", "ps-corked")
COLUMNS = ("frozen_ms", "dump_ms", "send_ms", "downtime_ms")


# -- the destination: a TransferServer and page servers, driven over stdin -------------
def destination(host: str, where: Path) -> None:
    """Serve until stdin closes: ``ps NAME [TLSDIR]`` starts CRIU's own page server on a
    port, ``wait`` reaps it; the TransferServer serves ferry's pages sessions itself."""
    server = TransferServer(
        where / "ferry", SECRET, "dst", host=host, page_server=Criu().page_server
    )
    server.start()
    print(server.address[1], flush=True)
    proc: subprocess.Popen[bytes] | None = None
    for line in sys.stdin:
        cmd, *args = line.split()
        if cmd == "ps":
            images = where / "ps" / args[0]
            port = free_port(host)
            started = time.monotonic()
            images.mkdir(parents=True)  # the adapter never listens on a port: spawn it by hand
            proc = subprocess.Popen(
                [
                    "criu",
                    "page-server",
                    "-D",
                    str(images),
                    "-o",
                    "ps.log",
                    "--address",
                    host,
                    "--port",
                    str(port),
                    *(tls_args(Path(args[1])) if args[1:] else []),
                ]
            )
            wait_listening(host, port)
            print(port, round((time.monotonic() - started) * 1000, 1), flush=True)
        elif cmd == "wait":
            assert proc is not None
            print(proc.wait(timeout=600), flush=True)
        elif cmd == "clean":
            shutil.rmtree(where / "ps", ignore_errors=True)
            shutil.rmtree(where / "ferry" / args[0], ignore_errors=True)
            print("ok", flush=True)
    server.stop()


def free_port(host: str) -> int:
    import socket

    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_listening(host: str, port: int) -> None:
    """Poll ``ss`` (a test connection would use up the page server's one session)."""
    deadline = time.monotonic() + 10
    while (
        f"{host}:{port} "
        not in subprocess.run(["ss", "-Hltn"], capture_output=True, text=True).stdout
    ):
        if time.monotonic() > deadline:
            raise SystemExit(f"page server on {host}:{port} did not come up")
        time.sleep(0.005)


def tls_args(pki: Path) -> list[str]:
    return [
        "--tls",
        "--tls-cacert",
        str(pki / "ca.pem"),
        "--tls-cert",
        str(pki / "cert.pem"),
        "--tls-key",
        str(pki / "key.pem"),
    ]


def make_pki(pki: Path, hosts: list[str]) -> None:
    """A throwaway CA and one certificate (for every host) that both ends present."""
    pki.mkdir(parents=True)
    san = "subjectAltName=" + ",".join(f"IP:{h}" for h in hosts)
    (pki / "ext").write_text(san + "\n")
    for argv in (
        [
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "1",
            "-subj",
            "/CN=ferry-bench-ca",
        ],
        [
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "key.pem",
            "-out",
            "req.csr",
            "-subj",
            f"/CN={hosts[0]}",
        ],
        [
            "x509",
            "-req",
            "-in",
            "req.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "cert.pem",
            "-days",
            "1",
            "-extfile",
            "ext",
        ],
    ):
        subprocess.run(["openssl", *argv], cwd=pki, check=True, capture_output=True)


# -- the source: holders, dumps and sends ----------------------------------------------
class Peer:
    """The destination helper process, one line in, one line out."""

    def __init__(self, argv: list[str]) -> None:
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.port = int(self.ask(None)[0])

    def ask(self, line: str | None) -> list[str]:
        stdin, stdout = self.proc.stdin, self.proc.stdout
        assert stdin is not None and stdout is not None
        if line is not None:
            stdin.write(line + "\n")
            stdin.flush()
        answer = stdout.readline().split()
        if not answer:
            raise SystemExit("the destination helper died")
        return answer

    def close(self) -> None:
        stdin: IO[str] | None = self.proc.stdin
        assert stdin is not None
        stdin.close()
        self.proc.wait(timeout=30)


def source(
    dst: str,
    dst_netns: str | None,
    sizes: list[int],
    runs: int,
    methods: list[str],
    where: Path,
    pki: Path | None,
) -> list[dict[str, Any]]:
    """Run every cell from this (the source's) network namespace; return the rows."""
    into = ["ip", "netns", "exec", dst_netns] if dst_netns else []
    peer = Peer(
        [
            *into,
            sys.executable,
            __file__,
            "--role",
            "dst",
            "--host",
            dst,
            "--dir",
            str(where / "dst"),
        ]
    )
    rows = []
    try:
        for size in sizes:
            pid = start_holder(size, where)
            load = os.getloadavg()[0]  # other work on the machine skews the numbers: say how much
            try:
                samples: dict[str, list[dict[str, float]]] = {m: [] for m in methods}
                for run in range(runs):
                    for method in methods:
                        samples[method].append(
                            dump_and_send(method, pid, dst, peer, where, f"{size}-{run}", pki)
                        )
                for method in methods:
                    rows.append(
                        {
                            **summarise(size, method, samples[method]),
                            "load1_before_after": [round(load, 2), round(os.getloadavg()[0], 2)],
                        }
                    )
                    print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
            finally:
                subprocess.run(["kill", "-9", str(pid)], check=False)
    finally:
        peer.close()
    return rows


def start_holder(size: int, where: Path) -> int:
    workdir = where / f"holder-{size}"
    workdir.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "workers.runtimes.launch",
            "--name",
            f"h{size}",
            "--dir",
            str(workdir),
            "--log",
            str(workdir / "log"),
            "--",
            sys.executable,
            "-c",
            HOLDER,
            str(size),
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    pid = int(done.stdout)
    deadline = time.monotonic() + 60
    while rss_mb(pid) < size and time.monotonic() < deadline:  # wait until it holds it all
        time.sleep(0.05)
    return pid


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def dump_and_send(
    method: str, pid: int, dst: str, peer: Peer, where: Path, tag: str, pki: Path | None
) -> dict[str, float]:
    images = where / "src" / f"{method}-{tag}"
    mid = f"{method}-{tag}"
    setup_ms = 0.0
    started = time.monotonic()
    if method == "local":
        stats = Criu().dump(pid, images, leave_running=True)
    elif method == "ps":
        relay = Relay(
            PagesTarget(
                (dst, peer.port),
                lambda: issue_token(SECRET, mid, "src", "dst", now=time.time()),
                mid,
                "final",
            )
        )
        with relay as fd:
            stats = Criu().dump(pid, images, leave_running=True, ps_socket=fd)
        assert relay.stats is not None
        check_pages(relay.stats.to_dict(), where / "dst" / "ferry" / mid / "final")
    else:
        port, setup = peer.ask(f"ps {mid}" + (f" {pki}" if method == "ps-tls" else ""))
        setup_ms = float(setup)
        started = time.monotonic()
        images.mkdir(parents=True)  # CRIU's own connection, plain or TLS
        extra = tls_args(pki) if method == "ps-tls" and pki else []
        subprocess.run(
            [
                "criu",
                "dump",
                "-t",
                str(pid),
                "-D",
                str(images),
                "-o",
                "dump.log",
                "--leave-running",
                "--page-server",
                "--address",
                dst,
                "--port",
                port,
                *extra,
            ],
            check=True,
            capture_output=True,
        )
        stats = dump_stats(images, (time.monotonic() - started) * 1000)
        if peer.ask("wait") != ["0"]:
            raise SystemExit(f"page server failed for {mid}")
    dumped = time.monotonic()
    files = [p for p in images.iterdir() if p.is_file() and p.suffix != ".log"]
    token = issue_token(SECRET, mid, "src", "dst", now=time.time())
    send_files((dst, peer.port), lambda: token, mid, [(p, p.name) for p in files])
    sent = time.monotonic()
    pages = sum(p.stat().st_size for p in files if p.name.startswith("pages-"))
    shutil.rmtree(images)
    peer.ask(f"clean {mid}")
    return {
        "frozen_ms": stats.frozen_ms,
        "dump_ms": (dumped - started) * 1000,
        "send_ms": (sent - dumped) * 1000,
        "downtime_ms": (sent - started) * 1000,
        "setup_ms": setup_ms,
        "local_pages_mb": pages / 2**20,
    }


def summarise(size: int, method: str, samples: list[dict[str, float]]) -> dict[str, Any]:
    row: dict[str, Any] = {"size_mib": size, "method": method, "runs": len(samples)}
    for key in (*COLUMNS, "setup_ms", "local_pages_mb"):
        row[key] = round(statistics.median(s[key] for s in samples), 1)
    return row


# -- the run ---------------------------------------------------------------------------
def run_link(
    link: str, args: argparse.Namespace, methods: list[str], work: Path, pki: Path | None, bed: Any
) -> list[dict[str, Any]]:
    common = [
        "--sizes",
        args.sizes,
        "--runs",
        str(args.runs),
        "--methods",
        ",".join(methods),
        "--dir",
        str(work),
    ] + (["--pki", str(pki)] if pki else [])
    if link == "loopback":
        argv = [sys.executable, __file__, "--role", "src", "--dst", "127.0.0.1", *common]
    else:
        bed.shape("node1", link)
        bed.shape("node2", link)
        argv = [
            "ip",
            "netns",
            "exec",
            f"{bed.prefix}-node1",
            sys.executable,
            __file__,
            "--role",
            "src",
            "--dst",
            bed.address("node2"),
            "--dst-netns",
            f"{bed.prefix}-node2",
            *common,
        ]
    done = subprocess.run(argv, stdout=subprocess.PIPE, text=True, check=True, cwd=ROOT)
    return [{"link": link, **row} for row in json.loads(done.stdout)]


def crossover(rows: list[dict[str, Any]], link: str, method: str) -> float | None:
    """The size (MiB) above which ``method`` beats ``local``: a line through their
    downtime differences, fitted by least squares; None if it never does."""
    diffs = {}
    for r in rows:
        if r["link"] == link and r["method"] in ("local", method):
            sign = 1 if r["method"] == "local" else -1
            diffs[r["size_mib"]] = diffs.get(r["size_mib"], 0.0) + sign * r["downtime_ms"]
    if len(diffs) < 2:
        return None
    if all(d > 0 for d in diffs.values()):
        return 0.0  # it wins at every size measured
    xs, ys = list(diffs), list(diffs.values())
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=False)) / sum(
        (x - mx) ** 2 for x in xs
    )
    if slope <= 0:
        return None
    return round(max(0.0, mx - my / slope), 1)


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "| link | MiB | method | frozen ms | dump ms | send ms | downtime ms |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    for r in report["rows"]:
        lines.append(
            f"| {r['link']} | {r['size_mib']} | {r['method']} | {r['frozen_ms']:.0f} | "
            f"{r['dump_ms']:.0f} | {r['send_ms']:.0f} | {r['downtime_ms']:.0f} |"
        )
    lines.append("")
    for link, found in report["crossover_mib"].items():
        for method, size in found.items():
            above = "never (in this range)" if size is None else f"{size:.0f} MiB (fitted)"
            lines.append(f"- {link}: {method} beats local above {above}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="benchmarks/page_server.py", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--sizes", default="64,256,1024", help="MiB, comma separated")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--links", default="loopback", help="loopback,1gbit,100mbit")
    parser.add_argument("--tls", action="store_true", help="also CRIU's page server over TLS")
    parser.add_argument("--wait-testbed", type=float, default=120)
    parser.add_argument("--dir", default=tempfile.gettempdir())
    parser.add_argument("--json", default=str(ROOT / "docs" / "benchmarks" / "page_server.json"))
    parser.add_argument("--markdown", action="store_true")
    # the helper processes (one per end, each in its netns)
    parser.add_argument("--role", choices=["src", "dst"], help=argparse.SUPPRESS)
    parser.add_argument("--dst", help=argparse.SUPPRESS)
    parser.add_argument("--dst-netns", help=argparse.SUPPRESS)
    parser.add_argument("--host", help=argparse.SUPPRESS)
    parser.add_argument("--methods", help=argparse.SUPPRESS)
    parser.add_argument("--pki", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.role == "dst":
        destination(args.host, Path(args.dir))
        return 0
    sizes = [int(s) for s in args.sizes.split(",")]
    if args.role == "src":
        rows = source(
            args.dst,
            args.dst_netns,
            sizes,
            args.runs,
            args.methods.split(","),
            Path(args.dir),
            args.pki,
        )
        print(json.dumps(rows))
        return 0
    if args.markdown:
        print(markdown(json.loads(Path(args.json).read_text())))
        return 0
    if os.geteuid() != 0:
        print("error: real CRIU (and the testbed) need root", file=sys.stderr)
        return 2
    links = args.links.split(",")
    methods = [*METHODS, *(["ps-tls"] if args.tls else [])]
    rows: list[dict[str, Any]] = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="ferry-bench-ps-", dir=args.dir) as tmp:
        work = Path(tmp)
        hosts = ["127.0.0.1", "10.77.0.12"]
        pki = work / "pki" if args.tls else None
        if pki is not None:
            make_pki(pki, hosts)
        if "loopback" in links:
            rows += run_link("loopback", args, methods, work, pki, None)
        shaped = [link for link in links if link != "loopback"]
        if shaped:
            from tests.e2e.netcluster import SUBNET, unique_prefix, wait_subnet_free
            from tests.testbed.cluster import Testbed

            holder = wait_subnet_free(args.wait_testbed)
            if holder:
                print(
                    f"error: another testbed holds {SUBNET}.0/24 (on {holder}); "
                    f"measured {', '.join(sorted(set(links) - set(shaped))) or 'nothing'}",
                    file=sys.stderr,
                )
            else:
                with Testbed(unique_prefix("fp"), nodes=2, subnet=SUBNET, delay_ms=0) as bed:
                    for link in shaped:
                        rows += run_link(link, args, methods, work, pki, bed)
    if Path(args.json).exists():  # keep the rows of links not measured in this run
        measured = {r["link"] for r in rows}
        old = json.loads(Path(args.json).read_text()).get("rows", [])
        rows = [r for r in old if r["link"] not in measured] + rows
    report = {
        "what": "cold final dump: local dump + ferry send vs ferry's pages stream (token, "
        "BLAKE3) vs CRIU's own page server (median of runs)",
        "machine": machine(),
        "criu": Criu().version(),
        "runs": args.runs,
        "seconds": round(time.monotonic() - started),
        "rows": rows,
        "crossover_mib": {
            link: {m: crossover(rows, link, m) for m in methods if m != "local"}
            for link in dict.fromkeys(r["link"] for r in rows)
        },
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
