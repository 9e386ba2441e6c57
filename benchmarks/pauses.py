"""What ferry reports beside what the workload felt and what the wire carried.

    sudo .venv/bin/python benchmarks/pauses.py                 # 64 and 256 MiB, 3 runs
    sudo .venv/bin/python benchmarks/pauses.py --sizes 64,256,1024 --runs 3
    .venv/bin/python benchmarks/pauses.py --markdown           # the saved table

Real CRIU, two real workers on this host (loopback), an embedded Redis on a
unix socket, so that every TCP byte on ``lo`` during a migration is the
migration's own: ferry's data plane and CRIU's page server.

The workload holds SIZE MiB, rewrites 1 % of its pages and prints
``time.time()`` every 10 ms. Its longest silence during a migration, less its
median tick, is the pause it felt; ferry's ``downtime_ms`` (the longest pause
in the record) should match it within 10 % or 20 ms. ``bytes`` (ferry's count:
passes, final transfer, lazy pages, sync) should match what an nftables
counter on ``lo`` saw (TCP, headers and ACKs included) within 2 %. ``auto``
runs beside the fixed strategies, and its downtime should be within 10 % of
the best fixed strategy of the same size. Each row is the median of ``--runs``
migrations, the strategies taking turns, the container moving back and forth.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.cold import loopback_cluster
from benchmarks.machine import machine
from tasks.api.client import Ferry
from tasks.core.summary import summary

WORKLOAD = """\
import sys, time
mem = bytearray(int(sys.argv[1]) << 20)
pages = len(mem) // 4096
for i in range(0, len(mem), 4096):
    mem[i] = 1
p, step = 0, max(1, pages // 100)
while True:
    for _ in range(step):
        mem[p * 4096] = (mem[p * 4096] + 1) % 256
        p = (p + 1) % pages
    print(f"{time.time():.6f}", flush=True)
    time.sleep(0.01)
"""
TABLE = "ferry_pauses_bench"
FIXED = ("cold", "delta", "postcopy")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="benchmarks/pauses.py", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--sizes", default="64,256", help="MiB, comma separated")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--strategies", default="cold,delta,postcopy,auto")
    parser.add_argument("--markdown", action="store_true", help="print the saved JSON as markdown")
    parser.add_argument("--dir", default=tempfile.gettempdir(), help="where state dirs go")
    parser.add_argument("--json", default=str(ROOT / "docs" / "benchmarks" / "pauses.json"))
    args = parser.parse_args(argv)
    if args.markdown:
        print(markdown(json.loads(Path(args.json).read_text())))
        return 0
    started = time.monotonic()
    rows: list[dict[str, Any]] = []
    with counter(), loopback_cluster(Path(args.dir)) as client:
        for size in (int(s) for s in args.sizes.split(",")):
            rows += run_size(client, size, args.strategies.split(","), args.runs)
    doc = {"rows": rows, "machine": machine(), "elapsed_s": round(time.monotonic() - started)}
    Path(args.json).write_text(json.dumps(doc, indent=1) + "\n")
    print(markdown(doc))
    return 0 if all(r["failed"] == 0 for r in rows) else 1


def run_size(client: Ferry, size: int, strategies: list[str], runs: int) -> list[dict[str, Any]]:
    name = f"pauses-{size}"
    info = client.run("n1", [sys.executable, "-u", "-c", WORKLOAD, str(size)], name=name)
    log, here = info["log"], "n1"
    time.sleep(2)  # a few hundred ticks before the first move: the median tick is known
    samples: dict[str, list[dict[str, Any]]] = {s: [] for s in strategies}
    try:
        for _ in range(runs):
            for strategy in strategies:
                there = "n2" if here == "n1" else "n1"
                sample = migrate(client, name, there, strategy, log)
                samples[strategy].append(sample)
                print(json.dumps({"size_mib": size, **sample}), file=sys.stderr, flush=True)
                if sample["state"] == "done":
                    here = there
                time.sleep(1.0)
    finally:
        client.kill(name)
    return [row(size, s, samples[s]) for s in strategies]


def migrate(client: Ferry, name: str, to: str, strategy: str, log: str) -> dict[str, Any]:
    before = wire_bytes()
    m = client.migrate(name, to, strategy=strategy).wait(timeout=300)
    time.sleep(0.5)  # the workload's first ticks after the restore, and the last ACKs
    wire = wire_bytes() - before
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
        "wire_bytes": wire,
        "link_source": m.options.link_source,
    }


def felt_ms(log: str, start: float, end: float) -> float | None:
    """The workload's longest silence between ``start`` and ``end``, less its median tick."""
    try:
        t = [float(x) for x in Path(log).read_text().split()]
    except (OSError, ValueError):
        return None
    window = [x for x in t if start - 1.0 <= x <= end]
    gaps = [b - a for a, b in zip(window, window[1:], strict=False)]
    if len(gaps) < 3:
        return None
    return round((max(gaps) - statistics.median(gaps)) * 1000, 1)


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


# -- the wire: an nftables counter on lo ----------------------------------------------------
class counter:
    """An nftables table counting every TCP byte that arrives on ``lo``, for the run."""

    def __enter__(self) -> None:
        nft(f"add table inet {TABLE}")
        nft(f"add chain inet {TABLE} input {{ type filter hook input priority -300 ; }}")
        nft(f"add rule inet {TABLE} input iifname lo meta l4proto tcp counter")

    def __exit__(self, *exc: object) -> None:
        nft(f"delete table inet {TABLE}")


def wire_bytes() -> int:
    out = nft(f"-j list chain inet {TABLE} input")
    rules = [e["rule"] for e in json.loads(out)["nftables"] if "rule" in e]
    return int(next(x["counter"]["bytes"] for x in rules[0]["expr"] if "counter" in x))


def nft(command: str) -> str:
    done = subprocess.run(["nft", *command.split()], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"error: nft {command}: {done.stderr.strip()} (needs root and nftables)")
    return done.stdout


# -- the table ---------------------------------------------------------------------------
def markdown(doc: dict[str, Any]) -> str:
    """Medians per size and strategy; the verdicts against the targets."""
    rows = doc["rows"]
    best = {
        size: min(
            (r["reported_ms"] for r in rows if r["size_mib"] == size and r["strategy"] in FIXED
             and r["reported_ms"] is not None),
            default=None,
        )
        for size in {r["size_mib"] for r in rows}
    }  # fmt: skip
    out = [
        "| MiB | strategy | ran | reported pause | workload felt | within 10 %/20 ms | "
        "paused total | degraded | bytes (ferry) | bytes (wire) | within 2 % |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        rep, felt = r["reported_ms"], r["felt_ms"]
        pause_ok = rep is not None and felt is not None and abs(rep - felt) <= max(0.1 * felt, 20)
        ratio = r["wire_bytes"] / r["bytes"] if r["bytes"] else None
        ran = ", ".join(r["ran"]) or "-"
        if r["strategy"] == "auto" and best.get(r["size_mib"]) and rep is not None:
            ran += f" ({rep / best[r['size_mib']]:.2f}x the best)"
        out.append(
            f"| {r['size_mib']} | {r['strategy']} | {ran} | {_ms(rep)} | {_ms(felt)} | "
            f"{'yes' if pause_ok else 'no'} | {_ms(r['paused_total_ms'])} | "
            f"{_ms(r['degraded_ms'])} | {_mib(r['bytes'])} | {_mib(r['wire_bytes'])} | "
            f"{'-' if ratio is None else ('yes' if abs(ratio - 1) <= 0.02 else 'no')} "
            f"({'-' if ratio is None else f'{ratio:.3f}'}) |"
        )
    m = doc["machine"]
    out.append(
        f"\n{m['cpus']} CPUs ({m['cpu']}), CRIU {m['criu']}, commit {m['commit']}; "
        f"medians of {rows[0]['runs'] if rows else 0} runs; {doc['elapsed_s']} s"
    )
    return "\n".join(out)


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.0f} ms"


def _mib(v: float | None) -> str:
    return "-" if v is None else f"{v / 2**20:.1f} MiB"


if __name__ == "__main__":
    sys.exit(main())
