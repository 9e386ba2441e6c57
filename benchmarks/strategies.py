"""Every strategy side by side: downtime and where it goes, total time, bytes, passes.

    sudo .venv/bin/python benchmarks/strategies.py            # default: fits in 10 min on 2 cores
    sudo .venv/bin/python benchmarks/strategies.py --sizes 64,256,1024 --runs 5 \\
        --links loopback,1gbit,100mbit [--rates 1,10,50] [--strategies cold,delta,postcopy]
        [--budget-s 500] [--dir /tmp] [--json ...] [--png ...]
    .venv/bin/python benchmarks/strategies.py --markdown      # the saved table, as markdown

The workload (``DIRTIER``) holds SIZE MiB of non-zero bytes and rewrites X %
of its pages every second, spread over time: every 10 ms it rewrites the next
``X % * pages * elapsed`` pages, walking a cursor through its memory (so within
a second the pages it rewrites are distinct ones, and a page is rewritten at
most once per pass over the memory; each rewrite changes the page's first
byte). A gap in its running (a freeze) is not caught up afterwards. Every
100 ms it logs how many pages it has rewritten, so the rate it achieved is
measured, not assumed.

Real CRIU, real workers: ``cold``, ``delta`` (full ``criu dump
--leave-running`` passes, changed 4 KiB blocks on the wire) and ``postcopy``
(CRIU lazy pages). One container per (link, size, rate) cell moves back and
forth between two nodes, the strategies taking turns run after run; each row
is the median of ``--runs`` migrations, column by column (the parts need not
add up to the median downtime). ``precopy`` and ``hybrid`` need soft-dirty
tracking, which this kernel lacks (ferry refuses them): their rows come from
the ``sim`` runtime (workers/runtimes/sim.py) through the same queue, coordinator and
data plane, and are labelled SIMULATED. Its containers dirty memory at the
model's default rate and hot set (docs/sim.md), not the cell's rate: its rows
are per size and link only, and a sim ``cold`` row is there to compare the
model with real CRIU. (The rows in docs/benchmarks/strategies.json predate
that model: that sim had no dirty rate and wrote at most 1 MiB of image.)

Downtime is ``tasks.core.summary.downtime``'s (CRIU froze the tree on the source ->
the restored tree resumed on the destination), split here more finely than
``summary`` does:

``freeze``   CRIU's frozen time in the final dump (post-copy: seize to page
             server up, which ``summary`` books as overhead)
``delta``    delta only: ``make_delta`` on the source, inside the freeze window
``wire``     images over the data plane
``rebuild``  delta only: ``apply_delta`` on the destination (patch in place, hash)
``restore``  the restore call (``criu restore``; post-copy: lazy-pages daemon too)
``overhead`` the rest: queue hops, task start, bookkeeping (orchestration)

``bytes`` is everything sent for one migration: every pass, the final
transfer, and for post-copy the pages CRIU's page server sent after the
restore (from the destination's lazy-pages log). ``wire/chg`` (delta) is the
bytes of the passes after the first over the bytes of the 4 KiB blocks that
changed in them. ``pass frz`` (delta) is the freezes of the passes, on top of
the downtime. ``pull`` (post-copy) is when the last page arrived, after the
restore: the container runs, slowed by page faults, until then. ``load`` is
the 1-minute load average as the cell started: other work on the machine (2
cores) skews the numbers, the CPU-bound delta most.

Links: ``loopback`` is a LocalCluster on this host. ``1gbit`` and ``100mbit``
are the network-namespace testbed (tests/e2e/netcluster.py, the harness
benchmarks/cold.py uses): each node's worker in its own netns, its data plane
on its testbed address; node to node crosses two tbf-shaped veth links, no
added delay. Only one testbed may be up on a machine: the run waits up to
``--wait-testbed-s`` for another one to go down, else skips the shaped links.

The run keeps to ``--budget-s`` (500 s, so that with the wait the default run
ends within 10 minutes on a 2-core machine), counted from its start: a cell
that would not fit, by what the cells so far cost, is skipped, a cell stops
between runs once the time is up, and the JSON says so. Rows of cells not run
this time (or skipped) are kept from the JSON file. Each cell is saved as it
ends, and a SIGTERM takes the clusters and the testbed down and keeps what was
measured.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import itertools
import json
import os
import re
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


from benchmarks.machine import kill_all, machine
from tasks.api.client import Ferry
from tasks.api.localcluster import LocalCluster
from tasks.config.broker import stop_embedded
from tasks.core.migration import Migration
from tasks.core.summary import downtime
from workers.errors import FerryError

DIRTIER = """\
import os, sys, time
P = 4096
buf = bytearray(os.urandom(int(sys.argv[1]) << 20))  # incompressible: zstd cannot shrink it
pages = len(buf) // P
rate = pages * float(sys.argv[2]) / 100.0  # pages rewritten per second
cursor = touched = i = 0
owed, v = 0.0, 1
last = tick_at = time.monotonic()
while True:
    now = time.monotonic()
    owed += min(now - last, 0.05) * rate  # a freeze is not caught up afterwards
    last = now
    n = int(owed)
    owed -= n
    while n:
        k = min(n, pages - cursor)
        buf[cursor * P:(cursor + k) * P:P] = bytes((v,)) * k
        cursor, n, touched = cursor + k, n - k, touched + k
        if cursor == pages:
            cursor, v = 0, v % 255 + 1
    if now >= tick_at:
        print("tick", i, touched, f"{time.time():.3f}", flush=True)
        i += 1
        tick_at = max(tick_at + 0.1, now)
    time.sleep(0.01)
"""
REAL = ("cold", "delta", "postcopy")
SIM = ("sim:cold", "sim:precopy", "sim:hybrid")
ORDER = {s: i for i, s in enumerate(("cold", "delta", "postcopy", *SIM))}
LINKS = {"loopback": 0, "1gbit": 1, "100mbit": 2}
PAGE = 4096
MB = 1e6
# Seconds a cell costs per run: a fixed part and a part per MiB, per link; the
# guesses before anything is measured, replaced by what the cells measure.
GUESS_FIXED_S = {"real": 9.0, "sim": 4.5}
GUESS_S_PER_MIB = {"loopback": 0.035, "1gbit": 0.06, "100mbit": 0.5}
PARTS = ("freeze_ms", "delta_ms", "wire_ms", "rebuild_ms", "restore_ms", "overhead_ms")
COLUMNS = (
    "downtime_ms",
    *PARTS,
    "total_s",
    "bytes",
    "passes",
    "pass_freeze_ms",
    "pull_ms",
    "wire_per_changed",
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="benchmarks/strategies.py", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--sizes", default="64,256", help="MiB, comma separated")
    parser.add_argument("--rates", default="1,10,50", help="%% of pages rewritten per second")
    parser.add_argument("--links", default="loopback,1gbit", help="loopback,1gbit,100mbit")
    parser.add_argument(
        "--strategies",
        default=",".join((*REAL, *SIM)),
        help="cold,delta,postcopy (real CRIU), sim:cold,sim:precopy,sim:hybrid",
    )
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--budget-s", type=float, default=500)
    parser.add_argument(
        "--settle-s", type=float, default=0.5, help="the workload runs this long between migrations"
    )
    parser.add_argument("--downtime-limit-ms", type=float, default=300.0)
    parser.add_argument("--max-iterations", type=int, default=10)
    parser.add_argument("--fallback", default="postcopy")
    parser.add_argument(
        "--wait-testbed-s",
        type=float,
        default=120,
        help="how long to wait for another testbed to free the one subnet",
    )
    parser.add_argument("--dir", default=tempfile.gettempdir(), help="where state dirs go")
    parser.add_argument("--json", default=str(ROOT / "docs" / "benchmarks" / "strategies.json"))
    parser.add_argument("--png", default=str(ROOT / "docs" / "benchmarks" / "strategies.png"))
    parser.add_argument(
        "--markdown",
        action="store_true",
        help="print the saved JSON as a markdown table, run nothing",
    )
    args = parser.parse_args(argv)
    if args.markdown:
        doc = json.loads(Path(args.json).read_text())
        print(markdown(doc))
        return 0
    if os.geteuid() != 0:
        print("error: real CRIU (and the testbed) need root", file=sys.stderr)
        return 2
    sizes = [int(s) for s in args.sizes.split(",")]
    rates = [float(r) for r in args.rates.split(",")]
    links = args.links.split(",")
    strategies = args.strategies.split(",")
    bad = [s for s in strategies if s not in (*REAL, *SIM)] + [
        lk for lk in links if lk not in LINKS
    ]
    if bad:
        print(f"error: unknown strategy or link: {', '.join(bad)}", file=sys.stderr)
        return 2
    bench = Bench(args, strategies, time.monotonic() + args.budget_s)
    Bench.testbed_wait_s = args.wait_testbed_s
    started = time.monotonic()
    # A SIGTERM unwinds like an exception, so the clusters and the testbed are
    # taken down and what was measured is kept (each cell is saved as it ends).
    signal.signal(signal.SIGTERM, _terminated)
    try:
        if "loopback" in links:
            with loopback_cluster(Path(args.dir)) as (client, base):
                bench.run_link(client, base, "loopback", ("n1", "n2"), ("s1", "s2"), sizes, rates)
        shaped = [lk for lk in links if lk != "loopback"]
        if shaped:
            with testbed_cluster(Path(args.dir)) as cluster:
                if cluster is None:
                    for link in shaped:
                        bench.skip_link(link, sizes, rates, bench.testbed_why)
                else:
                    for link in shaped:
                        for node in cluster.nodes:
                            cluster.bed.shape(node, link)
                        bench.run_link(
                            cluster.client,
                            cluster.base,
                            link,
                            ("node1", "node2"),
                            ("node3", "node4"),
                            sizes,
                            rates,
                        )
    except Terminated:
        print("terminated: the clusters are down; rows measured so far are saved", flush=True)
    elapsed = time.monotonic() - started
    doc = write_json(Path(args.json), bench.rows, args, elapsed)
    print()
    print(text_table(doc["rows"]))
    print()
    for t in doc["targets"]:
        print(f"target {t['target']}: {t['verdict']} ({t['detail']})")
    print(f"\n{len(bench.rows)} rows in {elapsed:.0f} s; wrote {args.json}")
    plot(doc, Path(args.png))
    return 0 if all(r.get("state") != "failed" for r in bench.rows) else 1


class Terminated(Exception):
    """SIGTERM, raised where the run is."""


_cleaning = 0  # > 0 while a cluster is being taken down: a SIGTERM must not cut that short


def _terminated(signum: int, frame: object) -> None:
    if not _cleaning:
        raise Terminated


@contextmanager
def _not_interrupted() -> Iterator[None]:
    global _cleaning
    _cleaning += 1
    try:
        yield
    finally:
        _cleaning -= 1


# -- clusters --------------------------------------------------------------------------
def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FERRY_")}
    return {**env, "FERRY_ALLOW_PIPE_MAX_SIZE": "1"}  # post-copy's 4 MiB pipes


@contextmanager
def loopback_cluster(where: Path) -> Iterator[tuple[Ferry, Path]]:
    """n1, n2 (real CRIU) and s1, s2 (SIMULATED) and a coordinator, an embedded Redis."""
    base = Path(tempfile.mkdtemp(prefix="ferry-bench-strat-", dir=where))
    cluster = LocalCluster(base, _clean_env())
    try:
        cluster.start_coordinator()
        for n in ("n1", "n2"):
            cluster.start_node(n)
        for n in ("s1", "s2"):
            cluster.start_node(n, env={"FERRY_RUNTIME": "sim"})
        t0 = time.monotonic()
        cluster.wait_ready(["n1", "n2", "s1", "s2"])
        print(f"loopback cluster: up in {time.monotonic() - t0:.0f} s", flush=True)
        yield cluster.client, base
    finally:
        with _not_interrupted():
            kill_all(cluster.client)
            cluster.stop()
            stop_embedded(base)
            shutil.rmtree(base, ignore_errors=True)


@contextmanager
def testbed_cluster(where: Path) -> Iterator[Any]:
    """node1, node2 (real CRIU) and node3, node4 (SIMULATED) in netns; None if the subnet is taken."""
    from tests.e2e.netcluster import NetCluster, wait_subnet_free

    class Cluster(NetCluster):
        """NetCluster whose node3 and node4 run the sim runtime, post-copy allowed."""

        _sim = False

        def start_node(self, node: str) -> None:
            self._sim = node in ("node3", "node4")
            try:
                super().start_node(node)
            finally:
                self._sim = False

        def env(self) -> dict[str, str]:
            env = {**super().env(), "FERRY_ALLOW_PIPE_MAX_SIZE": "1"}
            return {**env, "FERRY_RUNTIME": "sim"} if self._sim else env

    waited = time.monotonic()
    holder = wait_subnet_free(Bench.testbed_wait_s)
    waited = time.monotonic() - waited
    if waited > 1:
        print(f"testbed: waited {waited:.0f} s for another testbed to free the subnet", flush=True)
    if holder:
        print(
            f"testbed: another testbed holds subnet 10.77.0 (on {holder}) after {Bench.testbed_wait_s:.0f} s: "
            "shaped links skipped",
            flush=True,
        )
        Bench.testbed_why = (
            f"the testbed subnet was taken (on {holder}) for {Bench.testbed_wait_s:.0f} s"
        )
        yield None
        return
    base = Path(tempfile.mkdtemp(prefix="ferry-bench-strat-tb-", dir=where))
    cluster = Cluster(base, nodes=4, rate="1gbit")
    try:
        t0 = time.monotonic()
        cluster.up()
        print(f"testbed: up in {time.monotonic() - t0:.0f} s", flush=True)
        yield cluster
    finally:
        with _not_interrupted():
            cluster.down()
            shutil.rmtree(base, ignore_errors=True)


# -- the workload ----------------------------------------------------------------------
def progress(log: str) -> list[tuple[int, int, float]]:
    """(tick, pages rewritten so far, wall time) from a dirtier's log."""
    try:
        lines = Path(log).read_text().splitlines()
    except OSError:
        return []
    out = []
    for ln in lines:
        f = ln.split()
        if len(f) == 4 and f[0] == "tick":
            out.append((int(f[1]), int(f[2]), float(f[3])))
    return out


def achieved_pct_s(log: str, pages: int, window_s: float = 3.0) -> tuple[float, float] | None:
    """The dirtier's rate over its last ``window_s`` of ticks: % of pages per second of wall
    time, and per second it ran (tick gaps over 0.25 s, its freezes, left out)."""
    p = [x for x in progress(log) if x[2] >= time.time() - window_s]
    if len(p) < 3 or p[-1][2] <= p[0][2]:
        return None
    wall = 100 * (p[-1][1] - p[0][1]) / pages / (p[-1][2] - p[0][2])
    steps = [(b[1] - a[1], b[2] - a[2]) for a, b in itertools.pairwise(p)]
    ran = [(n, dt) for n, dt in steps if 0 < dt < 0.25]
    running = 100 * sum(n for n, _ in ran) / pages / sum(dt for _, dt in ran) if ran else wall
    return wall, running


def wait_until(pred: Any, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > end:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)


# -- one migration's numbers -----------------------------------------------------------
_LAZY = re.compile(r"UFFD transferred pages: \((\d+)/(\d+)\)")


def lazy_pages_sent(base: Path, m: Migration, wait_s: float = 5.0) -> int | None:
    """Pages CRIU's page server sent after the restore, from the destination's lazy-pages log.

    The log is in the migration's incoming dir until the node's heartbeat
    collects it into ``logs/<mid>`` once the migration is final.
    """
    node = base / "nodes" / m.dst
    logs = (
        node / "logs" / m.id / "final-lazy-pages.log",
        node / "incoming" / m.id / "final" / "lazy-pages.log",
    )
    deadline = time.monotonic() + wait_s
    while True:
        for log in logs:
            try:
                found = _LAZY.findall(log.read_text(errors="replace"))
            except OSError:
                continue
            if found:
                return int(found[-1][0])
        if time.monotonic() > deadline:
            return None
        time.sleep(0.1)


def sample(m: Migration, base: Path, simulated: bool) -> dict[str, Any]:
    """Downtime split finely, and what one migration cost."""
    r = m.results
    dump, xfer, rest = r["dump"], r.get("transfer", {}), r["restore"]
    total = (rest["end"] - dump["freeze_start"]) * 1000
    if "page_server" in dump:  # lazy: frozen from seize until the page server is up
        freeze = (dump["end"] - dump["freeze_start"]) * 1000
    else:
        freeze = dump["frozen_ms"] + dump["freezing_ms"]
    delta = float(xfer.get("delta_ms", 0.0))
    wire = float(xfer.get("wall_ms", 0.0))
    rebuild = float(rest.get("rebuild_ms", 0.0))
    restore = rest["wall_ms"] - rebuild
    s: dict[str, Any] = {
        "downtime_ms": total,
        "freeze_ms": freeze,
        "delta_ms": delta,
        "wire_ms": wire,
        "rebuild_ms": rebuild,
        "restore_ms": restore,
        "overhead_ms": total - freeze - delta - wire - rebuild - restore,
        "total_s": m.updated - m.created,
        "passes": len(m.passes),
        # the hops between the freeze-window steps (queues, task start)
        "hop_dump_transfer_ms": (xfer.get("started", dump["end"]) - dump["end"]) * 1000,
        "hop_transfer_restore_ms": (rest["started"] - xfer.get("end", dump["end"])) * 1000,
        "summary_downtime": downtime(m),  # ferry's own split, for comparison
        # what it finished as: a pre-copy that fell back to post-copy, or as asked
        "final": "postcopy" if "page_server" in dump and m.strategy != "hybrid" else m.strategy,
        "id": m.id,
        "src": m.src,
        "dst": m.dst,
    }
    sent = sum(int(p["bytes_sent"]) for p in m.passes) + int(xfer.get("bytes", 0))
    if "page_server" in dump:
        pages = None if simulated else lazy_pages_sent(base, m)
        s["lazy_pages"] = pages
        if pages is not None:
            sent += pages * PAGE
        s["pull_ms"] = r.get("pages", {}).get("last_page_after_restore_ms")
    s["bytes"] = sent
    s["final_bytes"] = int(xfer.get("bytes", 0))
    if m.passes:
        s["pass_detail"] = [
            {k: p[k] for k in ("bytes_sent", "pages_written", "pages_total", "freeze_ms")}
            for p in m.passes
        ]
        s["pass_freeze_ms"] = sum(p["freeze_ms"] for p in m.passes)
        s["decision"] = r.get("decision", {}).get("reason")
        later = m.passes[1:]
        changed = sum(p["pages_written"] for p in later) * PAGE
        if m.strategy == "delta" and changed:
            s["wire_per_changed"] = sum(p["bytes_sent"] for p in later) / changed
    if m.warnings:
        s["warnings"] = list(m.warnings)
    for k, v in list(s.items()):
        if isinstance(v, float):
            s[k] = round(v, 3)
    return s


# -- cells -----------------------------------------------------------------------------
class Bench:
    testbed_why = ""
    testbed_wait_s = 120.0

    def __init__(self, args: argparse.Namespace, strategies: list[str], deadline: float) -> None:
        self.args = args
        self.real = [s for s in strategies if s in REAL]
        self.sim = [s for s in strategies if s in SIM]
        self.deadline = deadline
        self.rows: list[dict[str, Any]] = []
        self.fixed = dict(GUESS_FIXED_S)
        self.per_mib = dict(GUESS_S_PER_MIB)
        self._printed = False
        self.started = time.monotonic()

    def estimate_s(self, kind: str, link: str, size: int) -> float:
        """What a cell should cost: per run, a fixed part plus (real CRIU) a part per MiB."""
        n = len(self.real if kind == "real" else self.sim) / 3
        per_run = self.fixed[kind] + (size * self.per_mib[link] if kind == "real" else 0.0)
        return float(self.args.runs * n * per_run + 3 + size / 100)

    def fits(self, kind: str, link: str, size: int) -> tuple[bool, str]:
        need, left = self.estimate_s(kind, link, size), self.deadline - time.monotonic()
        return need <= left, f"time budget: ~{need:.0f} s needed, {left:.0f} s left"

    def skip(
        self, link: str, size: int, rate: float | None, strategies: list[str], why: str
    ) -> None:
        print(
            f"{link} {size} MiB {rate if rate is not None else '-'} %/s: skipped, {why}", flush=True
        )
        for s in strategies:
            self.rows.append(
                {
                    "link": link,
                    "size_mib": size,
                    "rate_pct_s": rate,
                    "strategy": s,
                    "simulated": s.startswith("sim:"),
                    "state": "skipped",
                    "why": why,
                }
            )

    def skip_link(self, link: str, sizes: list[int], rates: list[float], why: str) -> None:
        for size in sizes:
            if self.sim:
                self.skip(link, size, None, self.sim, why)
            for rate in rates:
                self.skip(link, size, rate, self.real, why)

    def run_link(
        self,
        client: Ferry,
        base: Path,
        link: str,
        real_nodes: tuple[str, str],
        sim_nodes: tuple[str, str],
        sizes: list[int],
        rates: list[float],
    ) -> None:
        for size in sizes:
            if self.sim:
                ok, why = self.fits("sim", link, size)
                if ok:
                    self.cell(client, base, link, size, None, sim_nodes, self.sim)
                else:
                    self.skip(link, size, None, self.sim, why)
            for rate in rates:
                if not self.real:
                    continue
                ok, why = self.fits("real", link, size)
                if ok:
                    self.cell(client, base, link, size, rate, real_nodes, self.real)
                else:
                    self.skip(link, size, rate, self.real, why)

    def cell(
        self,
        client: Ferry,
        base: Path,
        link: str,
        size: int,
        rate: float | None,
        nodes: tuple[str, str],
        strategies: list[str],
    ) -> None:
        """One container; each run moves it once with every strategy, back and forth."""
        simulated = rate is None
        name = f"{'sim' if simulated else 'dirty'}{size}-{int((rate or 0) * 10)}"
        t0 = time.monotonic()
        load = os.getloadavg()[0]
        if simulated:
            info = client.run(
                nodes[0], ["counter"], name=name, labels={"sim.memory": str(size << 20)}
            )
        else:
            info = client.run(
                nodes[0], [sys.executable, "-u", "-c", DIRTIER, str(size), str(rate)], name=name
            )
        samples: dict[str, list[dict[str, Any]]] = {s: [] for s in strategies}
        failed: dict[str, list[str]] = {}
        achieved: list[tuple[float, float]] = []
        pages = (size << 20) // PAGE
        mbit = {"loopback": 4000, "1gbit": 1000, "100mbit": 100}[link]
        timeout = 120 + 6 * size * 8.4 / mbit
        try:
            wait_until(
                lambda: bool(progress(info["log"])) or simulated, 60 + size / 20, f"{name} to start"
            )
            time.sleep(self.args.settle_s + 1)
            for run in range(self.args.runs):
                if run and time.monotonic() > self.deadline:
                    failed.setdefault("cell", []).append(
                        f"time budget: stopped after {run} of {self.args.runs} runs"
                    )
                    break
                for strategy in strategies:
                    if not simulated:
                        got = achieved_pct_s(info["log"], pages)
                        if got is not None:
                            achieved.append(got)
                    src = client.locate(name)
                    dst = nodes[1] if src == nodes[0] else nodes[0]
                    before = len(progress(info["log"]))
                    try:
                        m = client.migrate(
                            name,
                            dst,
                            strategy=strategy.removeprefix("sim:"),
                            downtime_limit_ms=self.args.downtime_limit_ms,
                            max_iterations=self.args.max_iterations,
                            fallback=self.args.fallback,
                        ).wait(timeout=timeout)
                    except (FerryError, TimeoutError) as exc:
                        failed.setdefault(strategy, []).append(f"run {run}: {exc}")
                        continue
                    if m.state.value != "done":
                        failed.setdefault(strategy, []).append(
                            f"run {run}: {m.state.value}: {'; '.join(m.errors)}"
                        )
                        continue
                    samples[strategy].append(sample(m, base, simulated))
                    if not simulated:  # it went on where it landed
                        wait_until(
                            lambda n=before: len(progress(info["log"])) > n + 2,
                            30,
                            f"{name} to tick on after {strategy}",
                        )
                    time.sleep(self.args.settle_s)
        except TimeoutError as exc:
            failed.setdefault("cell", []).append(str(exc))
        finally:
            try:
                client.kill(name)
            except FerryError as exc:
                failed.setdefault("cell", []).append(f"kill: {exc}")
        cell_s = time.monotonic() - t0
        self.learn("sim" if simulated else "real", link, size, cell_s, len(strategies))
        load_after = os.getloadavg()[0]
        for strategy in strategies:
            row = aggregate(samples[strategy], failed.get(strategy, []) + failed.get("cell", []))
            row.update(
                {
                    "link": link,
                    "size_mib": size,
                    "rate_pct_s": rate,
                    "strategy": strategy,
                    "simulated": simulated,
                    "rate_achieved_pct_s": _median([a[0] for a in achieved]),
                    "rate_running_pct_s": _median([a[1] for a in achieved]),
                    "cell_s": round(cell_s, 1),
                    "load1_before_after": [round(load, 2), round(load_after, 2)],
                    "measured": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                }
            )
            self.rows.append(row)
            print(text_table([row], header=not self._printed), flush=True)
            self._printed = True
        # saved as each cell ends: a run cut short keeps what it measured
        write_json(Path(self.args.json), self.rows, self.args, time.monotonic() - self.started)

    def learn(self, kind: str, link: str, size: int, cell_s: float, n: int) -> None:
        """Refit the cost model from the cell just measured."""
        per_run = (cell_s - 3 - size / 100) / max(self.args.runs, 1) / max(n / 3, 1e-9)
        if kind == "sim":
            self.fixed["sim"] = max(1.0, per_run)
        elif size >= 64:
            self.per_mib[link] = max(0.001, (per_run - self.fixed["real"]) / size)


def aggregate(samples: list[dict[str, Any]], errors: list[str]) -> dict[str, Any]:
    row: dict[str, Any] = {
        "runs": len(samples),
        "state": "failed" if errors and not samples else ("partial" if errors else "ok"),
    }
    if errors:
        row["errors"] = errors
    if samples:
        for col in COLUMNS:
            vals = [x[col] for x in samples if x.get(col) is not None]
            if vals:
                row[col] = round(statistics.median(vals), 3)
        row["downtime_ms_min"] = round(min(x["downtime_ms"] for x in samples), 1)
        row["downtime_ms_max"] = round(max(x["downtime_ms"] for x in samples), 1)
        row["finished_as"] = dict(collections.Counter(x["final"] for x in samples))
    row["samples"] = samples
    return row


# -- output ----------------------------------------------------------------------------
def _label(r: dict[str, Any]) -> str:
    """The strategy asked for, ``->`` what it finished as where it fell back (xN: N runs)."""
    s = str(r["strategy"]).removeprefix("sim:")
    finals = r.get("finished_as", {})
    if isinstance(finals, list):  # rows written before the counts were kept
        finals = dict(collections.Counter(x["final"] for x in r.get("samples", [])))
    fell = [f + ("" if n == r.get("runs") else f"x{n}") for f, n in finals.items() if f != s]
    label = s + (f"->{'/'.join(fell)}" if fell else "")
    return label + (" SIMULATED" if r["simulated"] else "")


def _rate(r: dict[str, Any]) -> str:
    if r.get("rate_pct_s") is None:
        return "-"
    got = r.get("rate_running_pct_s")
    return f"{r['rate_pct_s']:g}" + (f" ({got:.3g})" if got is not None else "")


def _median(values: list[float]) -> float | None:
    return round(statistics.median(values), 2) if values else None


def _f(v: Any, fmt: str = ".0f") -> str:
    return "-" if v is None else format(v, fmt)


HEAD = (
    "link",
    "MiB",
    "%/s (got)",
    "strategy",
    "downtime",
    "min-max",
    "freeze",
    "delta",
    "wire",
    "rebuild",
    "restore",
    "overhd",
    "total s",
    "MB sent",
    "passes",
    "pass frz",
    "pull",
    "wire/chg",
    "runs",
    "load",
)


def _cells(r: dict[str, Any]) -> list[str]:
    if "downtime_ms" not in r:
        why = r.get("why") or "; ".join(r.get("errors", []))
        return [r["link"], str(r["size_mib"]), _rate(r), _label(r), r["state"] + ": " + why]
    return [
        r["link"],
        str(r["size_mib"]),
        _rate(r),
        _label(r),
        _f(r["downtime_ms"]),
        f"{r['downtime_ms_min']:.0f}-{r['downtime_ms_max']:.0f}",
        *(_f(r.get(p)) for p in PARTS),
        _f(r.get("total_s"), ".1f"),
        _f(r["bytes"] / MB, ".1f"),
        _f(r.get("passes"), "g"),
        _f(r.get("pass_freeze_ms")),
        _f(r.get("pull_ms")),
        _f(r.get("wire_per_changed"), ".3f"),
        f"{r['runs']}" + ("" if r["state"] == "ok" else f" {r['state']}"),
        _f((r.get("load1_before_after") or [None])[0], ".1f"),
    ]


def text_table(rows: list[dict[str, Any]], header: bool = True) -> str:
    widths = (8, 5, 11, 26, 8, 11, 6, 6, 6, 7, 7, 6, 7, 8, 6, 8, 6, 8, 5, 5)
    lines = []
    if header:
        lines.append(" ".join(h.rjust(w) for h, w in zip(HEAD, widths, strict=True)))
    for r in sorted(rows, key=_key):
        c = _cells(r)
        lines.append(" ".join(v.rjust(w) for v, w in zip(c, widths, strict=False)))
    return "\n".join(lines)


def _key(r: dict[str, Any]) -> tuple[Any, ...]:
    return (
        LINKS.get(r["link"], 9),
        r["size_mib"],
        r.get("rate_pct_s") or -1,
        ORDER.get(r["strategy"], 9),
    )


def markdown(doc: dict[str, Any]) -> str:
    lines = ["| " + " | ".join(HEAD) + " |", "|" + "---|" * len(HEAD)]
    for r in sorted(doc["rows"], key=_key):
        c = _cells(r)
        c += [""] * (len(HEAD) - len(c))
        lines.append("| " + " | ".join(c) + " |")
    return "\n".join(lines)


def _get(
    rows: list[dict[str, Any]], link: str, size: int, rate: float | None, strategy: str
) -> dict[str, Any] | None:
    for r in rows:
        if (r["link"], r["size_mib"], r.get("rate_pct_s"), r["strategy"]) == (
            link,
            size,
            rate,
            strategy,
        ) and "downtime_ms" in r:
            return r
    return None


def targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The issue's targets, checked against what was measured (never assumed)."""
    out = []

    def add(target: str, ok: bool | None, detail: str) -> None:
        verdict = "not measured" if ok is None else ("met" if ok else "NOT met")
        out.append({"target": target, "verdict": verdict, "detail": detail})

    post = [r for r in rows if r["strategy"] == "postcopy" and "downtime_ms" in r]
    worst = max(post, key=lambda r: r["downtime_ms"], default=None)
    add(
        "post-copy downtime <= 150 ms",
        None if worst is None else worst["downtime_ms"] <= 150,
        "no post-copy rows"
        if worst is None
        else f"worst median {worst['downtime_ms']:.0f} ms ({worst['link']}, {worst['size_mib']} MiB, "
        f"{worst['rate_pct_s']:g} %/s); {sum(r['downtime_ms'] <= 150 for r in post)} of "
        f"{len(post)} cells within",
    )
    flat = []
    for link in LINKS:
        for rate in sorted({r["rate_pct_s"] for r in post}):
            by = {
                r["size_mib"]: r["downtime_ms"]
                for r in post
                if r["link"] == link and r["rate_pct_s"] == rate
            }
            if len(by) >= 2:
                flat.append((max(by.values()) / min(by.values()), link, rate, by))
    spans = {s for f in flat for s in f[3]}
    if flat:
        ratio, link, rate, by = max(flat, key=lambda f: f[0])
        add(
            "post-copy flat (<= 1.2x) from 64 MiB to 1 GiB",
            ratio <= 1.2 if {64, 1024} <= spans else None,
            f"worst max/min {ratio:.2f} over sizes {sorted(by)} ({link}, {rate:g} %/s)"
            + ("" if {64, 1024} <= spans else "; 1024 MiB not measured"),
        )
    else:
        add("post-copy flat (<= 1.2x) from 64 MiB to 1 GiB", None, "fewer than two sizes")
    delta = [r for r in rows if r["strategy"] == "delta" and r.get("wire_per_changed")]
    worst = max(delta, key=lambda r: r["wire_per_changed"], default=None)
    add(
        "delta: bytes on the wire <= 1.3x the bytes that changed",
        None if worst is None else worst["wire_per_changed"] <= 1.3,
        "no delta passes after the first"
        if worst is None
        else f"passes after the first: worst {worst['wire_per_changed']:.3f}x ({worst['link']}, "
        f"{worst['size_mib']} MiB, {worst['rate_pct_s']:g} %/s)",
    )
    for link, limit in (("1gbit", 0.40), ("100mbit", 0.15)):
        d, c = _get(rows, link, 256, 10.0, "delta"), _get(rows, link, 256, 10.0, "cold")
        failed = next(
            (
                r
                for r in rows
                if (r["link"], r["size_mib"], r.get("rate_pct_s"), r["strategy"])
                == (link, 256, 10.0, "delta")
                and r["state"] == "failed"
            ),
            None,
        )
        what = f"delta downtime <= {limit:.0%} of cold at 256 MiB, 10 %/s, {link}"
        if d and c:
            ratio = d["downtime_ms"] / c["downtime_ms"]
            add(
                what,
                ratio <= limit,
                f"delta {d['downtime_ms']:.0f} ms / cold {c['downtime_ms']:.0f} ms = {ratio:.0%}",
            )
        elif failed:  # a migration that never finishes has no downtime to compare
            add(what, False, "delta did not finish: " + "; ".join(failed.get("errors", [])))
        else:
            add(what, None, "not measured")
    real = [x["overhead_ms"] for r in rows if not r.get("simulated") for x in r.get("samples", [])]
    by = {
        s: [x["overhead_ms"] for r in rows if r["strategy"] == s for x in r.get("samples", [])]
        for s in REAL
    }
    add(
        "orchestration overhead inside the downtime <= 20 ms (median)",
        None if not real else statistics.median(real) <= 20,
        "no real migrations"
        if not real
        else f"median {statistics.median(real):.1f} ms over {len(real)} real migrations; "
        + ", ".join(f"{s} {statistics.median(v):.1f}" for s, v in by.items() if v),
    )
    return out


def _cell(r: dict[str, Any]) -> tuple[Any, ...]:
    return (r["link"], r["size_mib"], r.get("rate_pct_s"), r["strategy"])


def write_json(
    path: Path, rows: list[dict[str, Any]], args: argparse.Namespace, elapsed: float
) -> dict[str, Any]:
    old: dict[str, Any] = {}
    if path.exists():
        try:
            old = json.loads(path.read_text())
        except ValueError:
            old = {}
    # A cell run now replaces the saved one; a cell skipped now keeps a saved one.
    ran = {_cell(r) for r in rows if r["state"] != "skipped"}
    kept = [r for r in old.get("rows", []) if _cell(r) not in ran]
    saved = {_cell(r) for r in kept}
    new = [r for r in rows if _cell(r) in ran or _cell(r) not in saved]
    merged = sorted(kept + new, key=_key)
    doc = {
        "benchmark": "every strategy side by side: downtime and its parts, total, bytes, passes",
        "units": {
            "*_ms": "milliseconds, median over runs",
            "total_s": "submit to done, median",
            "bytes": "bytes sent per migration (passes + final + lazy pages), median",
            "rate_pct_s": "% of the pages the workload rewrites per second (asked)",
            "rate_achieved_pct_s": "what its log says it did per second of wall time in the 3 s before each migration (freezes included), median",
            "rate_running_pct_s": "the same per second it ran (tick gaps over 0.25 s left out)",
            "simulated": "true: the sim runtime (a model), never real CRIU",
        },
        "machine": machine(),
        "generated": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "last_command": " ".join(["benchmarks/strategies.py", *sys.argv[1:]]),
        "last_run_s": round(elapsed, 1),
        "limits": {
            "downtime_limit_ms": args.downtime_limit_ms,
            "max_iterations": args.max_iterations,
            "fallback": args.fallback,
        },
        "rows": merged,
    }
    doc["targets"] = targets(merged)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1) + "\n")
    return doc


def plot(doc: dict[str, Any], png: Path) -> None:
    """Stacked downtime parts per strategy: a panel per link and size (needs matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install matplotlib)")
        return
    # measured rows, and those that ran but never finished (drawn as a red x)
    rows = [r for r in doc["rows"] if "downtime_ms" in r or r["state"] == "failed"]
    links = [lk for lk in LINKS if any(r["link"] == lk for r in rows)]
    sizes = sorted({r["size_mib"] for r in rows})
    if not rows:
        return
    colors = {
        "freeze_ms": "#4c72b0",
        "delta_ms": "#dd8452",
        "wire_ms": "#55a868",
        "rebuild_ms": "#c44e52",
        "restore_ms": "#8172b3",
        "overhead_ms": "#937860",
    }
    fig, axes = plt.subplots(
        len(links), len(sizes), figsize=(5.5 * len(sizes), 4.6 * len(links)), squeeze=False
    )
    legend = False
    for i, link in enumerate(links):
        for j, size in enumerate(sizes):
            ax = axes[i, j]
            mine = sorted(
                (r for r in rows if r["link"] == link and r["size_mib"] == size), key=_key
            )
            x, ticks, labels, group = 0.0, [], [], None
            for r in mine:
                g = r.get("rate_pct_s")
                if group is not None and g != group:
                    x += 0.7
                group = g
                ticks.append(x)
                rate = "sim" if g is None else f"{g:g} %/s"
                if "downtime_ms" not in r:
                    ax.plot([x], [0], "rx", markersize=10)
                    labels.append(f"{_label(r)}  {rate}: did not finish")
                    x += 1
                    continue
                labels.append(f"{_label(r).replace(' SIMULATED', '*')}  {rate}")
                bottom = 0.0
                for part, color in colors.items():
                    v = max(0.0, r.get(part) or 0.0)
                    ax.bar(
                        x,
                        v,
                        bottom=bottom,
                        color=color,
                        width=0.8,
                        edgecolor="white",
                        hatch="//" if r["simulated"] else None,
                        label=part.removesuffix("_ms") if len(ticks) == 1 else None,
                    )
                    bottom += v
                ax.plot([x], [r["downtime_ms"]], "k_", markersize=10)
                x += 1
            if not ticks:
                ax.axis("off")
                ax.set_title(f"{link}, {size} MiB: not measured", fontsize=10)
                continue
            ax.set_xticks(ticks, labels, fontsize=7, rotation=70, ha="right")
            ax.set_ylabel("ms")
            ax.set_title(f"{link}, {size} MiB", fontsize=10)
            if not legend:
                handles, names = ax.get_legend_handles_labels()
                legend = bool(handles)
                if legend:
                    fig.legend(handles, names, fontsize=8, ncol=6, loc="upper right")
    fig.suptitle(
        "Median downtime split into its parts (black tick: median downtime; hatched, *: "
        "SIMULATED; red x: did not finish)",
        fontsize=11,
        x=0.01,
        ha="left",
    )
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=100)
    print(f"wrote {png}")


if __name__ == "__main__":
    sys.exit(main())
