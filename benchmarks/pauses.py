"""What ferry reports beside what the workload felt and what the wire carried.

    sudo .venv/bin/python benchmarks/pauses.py                 # 64 and 256 MiB, 3 runs
    sudo .venv/bin/python benchmarks/pauses.py --sizes 64,256,1024 --links loopback,1gbit
    .venv/bin/python benchmarks/pauses.py --markdown           # the saved table

Real CRIU, two real workers. On ``loopback`` both run on this host with an
embedded Redis on a unix socket, in a network namespace of their own (this
process's, for the run: :func:`private_loopback`), so that every TCP byte on
its ``lo`` during a migration is the migration's own, not another process's on
this host's ``lo``; of those the counter takes the ones to and from the nodes'
data-plane ports (a lazy dump's page server is spliced to the source's data
plane over ``lo``, a hop that no wire between two nodes carries).
On ``1gbit`` each runs in its own network namespace of the testbed, its link
shaped to 1 Gbit/s, and the wire is what the bridge forwarded from node to
node (Redis, on the bridge's own address, is not forwarded).

The workload holds SIZE MiB of random bytes (no codec shrinks them), rewrites
1 % of its pages and prints ``time.time()`` every 10 ms. Its longest silence during a migration, less its
median tick before it, is the pause it felt; ferry's ``downtime_ms`` (the longest pause
in the record) should match it within 10 % or 20 ms. ``bytes`` (ferry's count:
passes, final transfer, lazy pages, sync) should match what an nftables
counter on the wire saw (TCP, headers and ACKs included) within 2 %. ``auto``
runs beside the fixed strategies, and its downtime should be within 10 % of
the best fixed strategy of the same link and size. Each row is the median of ``--runs``
migrations, the strategies taking turns, the container moving back and forth.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.cold import loopback_cluster, testbed_cluster
from benchmarks.machine import footer, machine, ms
from tasks.api.client import Ferry
from tasks.core.summary import summary

WORKLOAD = """\
import os, sys, time
mem = bytearray(os.urandom(int(sys.argv[1]) << 20))
pages = len(mem) // 4096
p, step = 0, max(1, pages // 100)
while True:
    for _ in range(step):
        mem[p * 4096] = (mem[p * 4096] + 1) % 256
        p = (p + 1) % pages
    print(f"{time.time():.6f}", flush=True)
    time.sleep(0.01)
"""
TABLE = "ferry_pauses_bench"
FIXED = ("cold", "delta", "precopy", "postcopy")
LAZY = {"FERRY_ALLOW_PIPE_MAX_SIZE": "1"}  # post-copy's 4 MiB pipes, on a fresh machine too
CLONE_NEWNET = 0x40000000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="benchmarks/pauses.py", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--sizes", default="64,256", help="MiB, comma separated")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--strategies", default="cold,delta,precopy,postcopy,auto")
    parser.add_argument("--links", default="loopback", help="loopback and/or 1gbit (the testbed)")
    parser.add_argument(
        "--wait-testbed", type=float, default=600.0, help="s to wait for the subnet"
    )
    parser.add_argument("--markdown", action="store_true", help="print the saved JSON as markdown")
    parser.add_argument("--dir", default=tempfile.gettempdir(), help="where state dirs go")
    parser.add_argument("--json", default=str(ROOT / "docs" / "benchmarks" / "pauses.json"))
    args = parser.parse_args(argv)
    if args.markdown:
        print(markdown(json.loads(Path(args.json).read_text())))
        return 0
    started = time.monotonic()
    rows: list[dict[str, Any]] = []
    sizes = [int(s) for s in args.sizes.split(",")]
    strategies = args.strategies.split(",")
    for link in args.links.split(","):
        if link == "loopback":
            with private_loopback(), loopback_cluster(Path(args.dir), LAZY) as client:
                # the data plane's ports: a lazy dump's page server is spliced to the
                # source's data plane over this lo too, a hop no wire between nodes has
                ports = ", ".join(n.address.rpartition(":")[2] for n in client.nodes())
                hops = [f"iifname lo tcp {end} {{ {ports} }}" for end in ("dport", "sport")]
                with Counter("inet", "input", hops) as wire:
                    rows += run_sizes(client, link, sizes, strategies, args.runs, wire)
        elif link == "1gbit":
            with testbed_cluster(Path(args.dir), args.wait_testbed, LAZY) as (client, cluster, _):
                for node in cluster.nodes:
                    cluster.bed.shape(node, link)
                client.settings = client.settings.with_(link_bps=125e6)
                with Counter("bridge", "forward", ["meta l4proto tcp"]) as wire:
                    rows += run_sizes(client, link, sizes, strategies, args.runs, wire)
        else:
            parser.error(f"unknown link {link!r}: loopback or 1gbit")
    doc = {"rows": rows, "machine": machine(), "elapsed_s": round(time.monotonic() - started)}
    Path(args.json).write_text(json.dumps(doc, indent=1) + "\n")
    print(markdown(doc))
    return 0 if all(r["failed"] == 0 for r in rows) else 1


def run_sizes(
    client: Ferry, link: str, sizes: list[int], strategies: list[str], runs: int, wire: Counter
) -> list[dict[str, Any]]:
    nodes = sorted(n.name for n in client.nodes())[:2]
    return [
        {"link": link, **r}
        for size in sizes
        for r in run_size(client, nodes, size, strategies, runs, wire)
    ]


def run_size(
    client: Ferry, nodes: list[str], size: int, strategies: list[str], runs: int, wire: Counter
) -> list[dict[str, Any]]:
    name = f"pauses-{size}"
    info = client.run(nodes[0], [sys.executable, "-u", "-c", WORKLOAD, str(size)], name=name)
    log, here = info["log"], nodes[0]
    ticks_in(log, 200, timeout_s=120)  # its memory is written and the median tick is known
    samples: dict[str, list[dict[str, Any]]] = {s: [] for s in strategies}
    try:
        for _ in range(runs):
            for strategy in strategies:
                there = nodes[1] if here == nodes[0] else nodes[0]
                sample = migrate(client, name, there, strategy, log, wire)
                samples[strategy].append(sample)
                print(json.dumps({"size_mib": size, **sample}), file=sys.stderr, flush=True)
                if sample["state"] == "done":
                    here = there
                time.sleep(1.0)
    finally:
        client.kill(name)
    return [row(size, s, samples[s]) for s in strategies]


def migrate(
    client: Ferry, name: str, to: str, strategy: str, log: str, wire: Counter
) -> dict[str, Any]:
    before = wire.bytes()
    m = client.migrate(name, to, strategy=strategy).wait(timeout=300)
    time.sleep(0.5)  # the workload's first ticks after the restore, and the last ACKs
    sent = wire.bytes() - before
    s = summary(m)
    return {
        "strategy": strategy,
        "ran": s["strategy"],
        "state": m.state.value,
        "reported_ms": s.get("downtime_ms"),
        "felt_ms": felt_ms(log, m.created, m.updated + 0.5),
        "paused_total_ms": s.get("paused_total_ms"),
        "pauses": s.get("pauses"),
        "degraded_ms": s.get("degraded_ms"),
        "bytes": s["bytes"],
        "wire_bytes": sent,
        "link_source": m.options.link_source,
        "load": round(os.getloadavg()[0], 1),  # this host's, as the migration ended
    }


def ticks_in(log: str, n: int, timeout_s: float) -> None:
    """Wait until the workload has ticked ``n`` times."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            if len(times(Path(log).read_text())) >= n:
                return
        time.sleep(0.1)
    raise SystemExit(f"error: the workload did not tick {n} times in {timeout_s:.0f} s ({log})")


def times(text: str) -> list[float]:
    """The workload's ticks in its log: every line that is a number (the interpreter
    may say something first)."""
    out = []
    for line in text.splitlines():
        with contextlib.suppress(ValueError):
            out.append(float(line))
    return out


def felt_ms(log: str, start: float, end: float) -> float | None:
    """The workload's longest silence between ``start`` and ``end``, less its median
    tick in the 2 s before ``start``: undisturbed, for a post-copy's degraded
    ticks after the restore (each touching pages still on the source) would make
    the median of the migration's own ticks too long and the pause felt too short."""
    try:
        t = times(Path(log).read_text())
    except OSError:
        return None
    before = [b - a for a, b in zip(t, t[1:], strict=False) if start - 2.0 <= a and b <= start]
    window = [x for x in t if start - 1.0 <= x <= end]
    gaps = [b - a for a, b in zip(window, window[1:], strict=False)]
    if len(gaps) < 3 or len(before) < 3:
        return None
    return round((max(gaps) - statistics.median(before)) * 1000, 1)


def row(size: int, strategy: str, samples: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [s for s in samples if s["state"] == "done"]

    def med(key: str) -> float | None:
        values = [s[key] for s in ok if s.get(key) is not None]
        return round(statistics.median(values), 1) if values else None

    return {
        "size_mib": size,
        "strategy": strategy,
        "ran": sorted({s["ran"] for s in ok}),
        "runs": len(samples),
        "failed": len(samples) - len(ok),
        **{k: med(k) for k in ("reported_ms", "felt_ms", "paused_total_ms", "degraded_ms")},
        "pauses": med("pauses"),
        "bytes": med("bytes"),
        "wire_bytes": med("wire_bytes"),
        "samples": samples,
    }


# -- the wire: a loopback of our own, an nftables counter ----------------------------------------------------------
@contextlib.contextmanager
def private_loopback() -> Iterator[None]:
    """This process (and what it starts) in a new network namespace with its ``lo`` up,
    for the block; then back in the one it came from.

    The host's ``lo`` carries every other process's TCP too (another
    benchmark's migrations, a shared Redis): counted with ours, one run of
    delta at 64 MiB once showed 57 % more bytes than ferry sent.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    home = os.open("/proc/self/ns/net", os.O_RDONLY)
    try:
        if libc.unshare(CLONE_NEWNET) != 0:
            raise SystemExit(f"error: unshare(CLONE_NEWNET): {os.strerror(ctypes.get_errno())}")
        subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
        try:
            yield
        finally:
            if libc.setns(home, CLONE_NEWNET) != 0:
                raise SystemExit(f"error: setns back: {os.strerror(ctypes.get_errno())}")
    finally:
        os.close(home)


class Counter:
    """An nftables table counting the bytes through ``hook`` of ``family`` that match
    one of ``matches`` (``inet input`` on ``lo`` to or from a data-plane port, or
    ``bridge forward``: node to node), for the run."""

    def __init__(self, family: str, hook: str, matches: list[str]) -> None:
        self.family, self.hook, self.matches = family, hook, matches

    def __enter__(self) -> Counter:
        nft(f"add table {self.family} {TABLE}")
        nft(
            f"add chain {self.family} {TABLE} {self.hook} {{ type filter hook {self.hook} priority -300 ; }}"
        )
        for match in self.matches:
            nft(f"add rule {self.family} {TABLE} {self.hook} {match} counter")
        return self

    def __exit__(self, *exc: object) -> None:
        nft(f"delete table {self.family} {TABLE}")

    def bytes(self) -> int:
        return wire_bytes(f"{self.family} {TABLE} {self.hook}")


def wire_bytes(chain: str) -> int:
    out = nft(f"-j list chain {chain}")
    rules = [e["rule"] for e in json.loads(out)["nftables"] if "rule" in e]
    return sum(int(x["counter"]["bytes"]) for r in rules for x in r["expr"] if "counter" in x)


def nft(command: str) -> str:
    done = subprocess.run(["nft", *command.split()], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"error: nft {command}: {done.stderr.strip()} (needs root and nftables)")
    return done.stdout


# -- the table ---------------------------------------------------------------------------
def markdown(doc: dict[str, Any]) -> str:
    """Medians per size and strategy; the verdicts against the targets."""
    rows = doc["rows"]

    def cell(r: dict[str, Any]) -> tuple[str, int]:
        return r.get("link", "loopback"), r["size_mib"]

    best = {
        c: min(
            (r["reported_ms"] for r in rows if cell(r) == c and r["strategy"] in FIXED
             and r["reported_ms"] is not None),
            default=None,
        )
        for c in {cell(r) for r in rows}
    }  # fmt: skip
    out = [
        "| link | MiB | strategy | ran | reported pause | workload felt | within 10 %/20 ms | "
        "paused total | degraded | bytes (ferry) | bytes (wire) | within 2 % (median run) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        rep, felt = r["reported_ms"], r["felt_ms"]
        # each verdict from each run's own pair (medians of different runs need not agree)
        done = [x for x in r["samples"] if x["state"] == "done" and x.get("felt_ms") is not None]
        near = sum(
            abs(x["reported_ms"] - x["felt_ms"]) <= max(0.1 * x["felt_ms"], 20) for x in done
        )
        pause_ok = f"{'yes' if done and near == len(done) else 'no'} ({near}/{len(done)})"
        ratios = [x["wire_bytes"] / x["bytes"] for x in done if x.get("bytes")]
        ratio = statistics.median(ratios) if ratios else None
        ran = ", ".join(r["ran"]) or "-"
        if r["strategy"] == "auto" and best.get(cell(r)) and rep is not None:
            ran += f" ({rep / best[cell(r)]:.2f}x the best)"
        out.append(
            f"| {cell(r)[0]} | {r['size_mib']} | {r['strategy']} | {ran} | {ms(rep)} | {ms(felt)} | "
            f"{pause_ok} | {ms(r['paused_total_ms'])} | "
            f"{ms(r['degraded_ms'])} | {_mib(r['bytes'])} | {_mib(r['wire_bytes'])} | "
            f"{'-' if ratio is None else ('yes' if abs(ratio - 1) <= 0.02 else 'no')} "
            f"({'-' if ratio is None else f'{ratio:.3f}'}) |"
        )
    out.append(footer(doc, rows[0]["runs"] if rows else 0))
    loads = [x["load"] for r in rows for x in r["samples"] if "load" in x]
    if loads:
        out[-1] += f"; load average {min(loads):.0f}-{max(loads):.0f} (1 min, as each run ended)"
    return "\n".join(out)


def _mib(v: float | None) -> str:
    return "-" if v is None else f"{v / 2**20:.1f} MiB"


if __name__ == "__main__":
    sys.exit(main())
