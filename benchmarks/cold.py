"""Cold migration downtime, and where it goes, for a few container sizes over a few links.

    .venv/bin/python benchmarks/cold.py                  # loopback only (~1 min)
    .venv/bin/python benchmarks/cold.py --testbed        # and the 1gbit, 100mbit links (~5 min)
    .venv/bin/python benchmarks/cold.py --links 100mbit --sizes 1024      # the slow cell (~9 min)
    .venv/bin/python benchmarks/cold.py --page-server on,off --data fill,text,random  # side by side
        [--runs 5] [--budget-s 540] [--wait-testbed 120] [--dir /tmp]
        [--page-server auto] [--compression auto] [--data random]
        [--json docs/benchmarks/cold.json]
    .venv/bin/python benchmarks/cold.py --markdown       # the saved table, as markdown

Each cell (size, link) starts one container that holds SIZE MiB of non-zero
bytes (every page written) and prints a tick every 50 ms, then migrates it
``--runs`` times back and forth between two nodes with real CRIU through the
real Celery workers, and reports the median of each number over the runs
(each column's own median: the parts need not add up to the downtime's).
Size 0 is the tiny counter alone. ``seen`` is the downtime as the workload
saw it: the longest silence of its 50 ms ticker, less the 50 ms.

Each of ``--page-server`` (auto, on, off: the dump's pages stream into the
destination's CRIU, or go as files), ``--compression`` (auto, none, zstd:
how image files travel) and ``--data`` (what the memory holds: ``random``,
incompressible, the default; ``text``, random words, which zstd shrinks to
~0.36; ``fill``, one byte repeated, ~1/200) is a comma-separated axis; every
combination is a cell. On a shaped link the client's ``link_bps`` is set to the link's rate,
as an operator configures it, so automatic compression sees the link.

Links: ``loopback`` is a LocalCluster on this host (embedded Redis in a temp
dir, both data planes on 127.0.0.1). ``1gbit`` and ``100mbit`` are the
network-namespace testbed (tests/e2e/netcluster.py): each node's worker runs
in its own netns, its data plane on its testbed address, and the images cross
two tbf-shaped veth links. The testbed has no netem here: no added delay.

The run keeps to ``--budget-s`` (default 540 s, so a run ends in under ten
minutes on a 2-core machine): a cell that would not fit, by the throughput
measured so far, is skipped and the JSON says so. Rows of links not measured
in this run are kept from the existing JSON file.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import os
import shutil
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
from tasks.core.summary import downtime, summary
from workers.errors import FerryError, PermanentError

HOLDER = (
    "import os, random, sys, time\n"
    "size, kind = int(sys.argv[1]) << 20, sys.argv[2]\n"
    "if kind == 'random':\n"
    "    hold = bytearray(os.urandom(size))\n"
    "elif kind == 'text':  # 1 MiB of random words, repeated: zstd's window sees one copy\n"
    "    rng = random.Random(0)\n"
    "    words = [rng.randbytes(rng.randint(2, 6)).hex() for _ in range(5000)]\n"
    "    block = ' '.join(rng.choices(words, k=200_000)).encode()[: 1 << 20]\n"
    "    hold = bytearray(block * (size >> 20))\n"
    "else:  # every page written, non-zero\n"
    "    hold = bytearray(b'\\xa5') * size\n"
    "i = 0\n"
    "while True:\n"
    "    print('tick', i, time.time(), flush=True)\n"
    "    i += 1\n"
    "    time.sleep(0.05)\n"
)
NODES = ("n1", "n2")
# What a cell is expected to cost before anything is measured: MB/s over the link, and
# seconds per migration on top of the wire (dump, restore, queues, the settle pause).
GUESS_MB_S = {"loopback": 300.0, "1gbit": 110.0, "100mbit": 11.5}
LINK_BPS = {"1gbit": 125e6, "100mbit": 12.5e6}  # what an operator sets link_bps to
FIXED_S = 2.5
MB = 1e6  # rates in MB/s (10^6), container sizes in MiB
COLUMNS = ("downtime_ms", "criu_freeze_ms", "wire_ms", "restore_ms", "overhead_ms")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/cold.py", description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="0,64,256,1024", help="MiB, comma separated")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--testbed", action="store_true", help="also the 1gbit and 100mbit links")
    parser.add_argument("--links", help="comma separated: loopback,1gbit,100mbit (overrides)")
    parser.add_argument("--budget-s", type=float, default=540)
    parser.add_argument(
        "--wait-testbed", type=float, default=120, help="s to wait for another testbed to go down"
    )
    parser.add_argument("--page-server", default="auto", help="comma separated: auto,on,off")
    parser.add_argument("--compression", default="auto", help="comma separated: auto,none,zstd")
    parser.add_argument("--data", default="random", help="comma separated: random,text,fill")
    parser.add_argument("--markdown", action="store_true", help="print the saved JSON as markdown")
    parser.add_argument("--dir", default=tempfile.gettempdir(), help="where state dirs go")
    parser.add_argument("--json", default=str(ROOT / "docs" / "benchmarks" / "cold.json"))
    args = parser.parse_args(argv)
    if args.markdown:
        print(markdown(json.loads(Path(args.json).read_text())))
        return 0
    sizes = [int(s) for s in args.sizes.split(",")]
    axes = list(
        itertools.product(
            args.page_server.split(","), args.compression.split(","), args.data.split(",")
        )
    )
    links = (
        args.links.split(",")
        if args.links
        else (["loopback", "1gbit", "100mbit"] if args.testbed else ["loopback"])
    )
    if os.geteuid() != 0:
        print("error: real CRIU (and the testbed) need root", file=sys.stderr)
        return 2
    started = time.monotonic()
    deadline = started + args.budget_s
    rows: list[dict[str, Any]] = []
    rates: dict[str, float] = {}
    loopback = [lk for lk in links if lk == "loopback"]
    shaped = [lk for lk in links if lk != "loopback"]
    if loopback:
        with loopback_cluster(Path(args.dir)) as client:
            rows += run_link(client, "loopback", sizes, axes, args.runs, deadline, rates)
    if shaped:
        with testbed_cluster(Path(args.dir), args.wait_testbed) as (client, cluster, waited):
            deadline += waited  # waiting for another run's testbed is not this run's time
            for link in shaped:
                for node in cluster.nodes:
                    cluster.bed.shape(node, link)
                client.settings = client.settings.with_(link_bps=LINK_BPS[link])
                rows += run_link(client, link, sizes, axes, args.runs, deadline, rates)
    elapsed = time.monotonic() - started
    print_table(rows)
    print(f"\n{len(rows)} cells in {elapsed:.0f} s")
    write_json(Path(args.json), rows, links, args, elapsed)
    return 0 if all(r.get("state") != "failed" for r in rows) else 1


# -- clusters --------------------------------------------------------------------------
@contextmanager
def loopback_cluster(where: Path, extra: dict[str, str] | None = None) -> Iterator[Ferry]:
    """Two nodes and a coordinator on this host, an embedded Redis of their own
    (``extra``: settings of theirs, e.g. FERRY_RUNTIME)."""
    with local_cluster(where, extra) as cluster:
        yield cluster.client


@contextmanager
def local_cluster(
    where: Path, extra: dict[str, str] | None = None, mounts: Any = None
) -> Iterator[LocalCluster]:
    """:func:`loopback_cluster`'s cluster itself (``mounts``: LocalCluster's, per node)."""
    base = Path(tempfile.mkdtemp(prefix="ferry-bench-cold-", dir=where))
    env = {k: v for k, v in os.environ.items() if not k.startswith("FERRY_")} | (extra or {})
    cluster = LocalCluster(base, env, mounts)
    try:
        cluster.start_coordinator()
        for n in NODES:
            cluster.start_node(n)
        cluster.wait_ready(list(NODES))
        yield cluster
    finally:
        kill_all(cluster.client)
        cluster.stop()
        stop_embedded(base)
        shutil.rmtree(base, ignore_errors=True)


@contextmanager
def testbed_cluster(
    where: Path, wait_s: float, extra: dict[str, str] | None = None
) -> Iterator[tuple[Ferry, Any, float]]:
    """Two testbed nodes, each worker in its own netns; Redis on the bridge
    (``extra``: settings of theirs, as for :func:`loopback_cluster`).

    Yields the client, the cluster and the seconds spent waiting for another
    testbed on the one subnet to go down.
    """
    from tests.e2e.netcluster import NetCluster, subnet_in_use, wait_subnet_free

    base = Path(tempfile.mkdtemp(prefix="ferry-bench-cold-tb-", dir=where))
    start = time.monotonic()
    while True:
        left = wait_s - (time.monotonic() - start)
        holder = wait_subnet_free(max(left, 0))
        if holder:
            raise SystemExit(
                f"error: another testbed holds the subnet (on {holder}) for {wait_s:.0f} s"
            )
        cluster = NetCluster(base, nodes=2, rate="1gbit", prefix=None, extra=extra)
        try:
            cluster.up()
            break
        except PermanentError:
            if not subnet_in_use() or time.monotonic() - start > wait_s:
                raise
            print("another testbed took the subnet first; waiting again", file=sys.stderr)
    waited = time.monotonic() - start
    try:
        yield cluster.client, cluster, waited
    finally:
        cluster.down()
        shutil.rmtree(base, ignore_errors=True)


# -- measuring -------------------------------------------------------------------------
def stamps(log: str) -> list[float]:
    """When each tick was printed (the container's clock: this host's)."""
    try:
        lines = Path(log).read_text().splitlines()
    except OSError:
        return []
    return [float(p[2]) for p in (ln.split() for ln in lines) if len(p) == 3 and p[0] == "tick"]


def observed_gap_ms(log: str, start: float, end: float) -> float | None:
    """The longest silence of the counter between ``start`` and ``end``, less its 50 ms sleep.

    A check on the downtime that tasks.core.summary computes from the phases' own
    timestamps: the outage as the workload itself saw it.
    """
    t = [x for x in stamps(log) if start <= x <= end]
    gaps = [b - a for a, b in itertools.pairwise(t)]
    return round((max(gaps) - 0.05) * 1000, 1) if gaps else None


def ticks(log: str) -> list[int]:
    try:
        lines = Path(log).read_text().splitlines()
    except OSError:
        return []
    return [int(ln.split()[1]) for ln in lines if ln.startswith("tick ")]


def wait_until(pred: Any, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > end:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)


def estimate_s(link: str, size_mb: int, runs: int, rates: dict[str, float]) -> float:
    rate = rates.get(link, GUESS_MB_S[link])
    image_mb = size_mb * 1.048576 + 5  # MiB of memory as MB on the wire, plus the interpreter
    return runs * (image_mb / rate + FIXED_S + size_mb / 1024 * 3) + 3 + size_mb / 1024 * 2


def run_link(
    client: Ferry,
    link: str,
    sizes: list[int],
    axes: list[tuple[str, str, str]],
    runs: int,
    deadline: float,
    rates: dict[str, float],
) -> list[dict[str, Any]]:
    rows = []
    nodes = sorted(n.name for n in client.nodes() if n.alive)[:2]
    for size, (page_server, compression, data) in itertools.product(sizes, axes):
        how = {"page_server": page_server, "compression": compression, "data": data}
        need = estimate_s(link, size, runs, rates)
        left = deadline - time.monotonic()
        if need > left:
            print(
                f"{link} {size} MiB: skipped, needs ~{need:.0f} s and {left:.0f} s are left",
                flush=True,
            )
            rows.append(
                {
                    "link": link,
                    "size_mib": size,
                    **how,
                    "state": "skipped",
                    "why": f"time budget: ~{need:.0f} s needed, {left:.0f} s left",
                }
            )
            continue
        row = run_cell(client, link, size, how, runs, nodes)
        rows.append(row)
        if row.get("mb_s"):
            rates[link] = row["mb_s"]
    return rows


def run_cell(
    client: Ferry, link: str, size: int, how: dict[str, str], runs: int, nodes: list[str]
) -> dict[str, Any]:
    # a log of its own: the container root is shared
    name = f"cold{size}-{link}-{how['page_server']}-{how['compression']}-{how['data']}"
    t0 = time.monotonic()
    load_before = os.getloadavg()[0]  # other work on the machine skews the numbers: say how much
    started = time.time()
    info = client.run(
        nodes[0], [sys.executable, "-u", "-c", HOLDER, str(size), how["data"]], name=name
    )
    samples: list[dict[str, Any]] = []
    failed: list[str] = []
    try:
        # ticking means all its memory is written (the ticks come after the allocation)
        wait_until(
            lambda: len([t for t in stamps(info["log"]) if t > started]) >= 2,
            60 + size / 20,
            f"{name} to start",
        )
        for i in range(runs):
            dst = nodes[(i + 1) % 2]
            before = len(ticks(info["log"]))
            m = client.migrate(
                name,
                dst,
                strategy="cold",
                page_server=how["page_server"],
                compression=how["compression"],
            ).wait(timeout=300 + size)
            if m.state.value != "done":
                failed.append(f"run {i}: {m.state.value}: {'; '.join(m.errors)}")
                break
            d = downtime(m) or {}
            s = summary(m)
            xfer = m.results.get("transfer", {})
            samples.append(
                {
                    **d,
                    "total_s": s["total_s"],
                    "bytes": s["bytes"],
                    "streamed": "pages" in m.results["dump"],
                    "codec": xfer.get("codec", "none"),
                    "image_bytes": m.results["dump"].get("image_bytes", 0),
                    "pages_written": m.results["dump"].get("pages_written", 0),
                    "dump_wall_ms": m.results["dump"].get("wall_ms", 0),
                    "src": m.src,
                    "dst": m.dst,
                    "id": m.id,
                }
            )
            # the counter went on where it landed before the next move
            wait_until(lambda n=before: len(ticks(info["log"])) > n + 2, 20, f"{name} to tick on")
            samples[-1]["observed_gap_ms"] = observed_gap_ms(
                info["log"], m.results["dump"]["freeze_start"] - 1, m.results["restore"]["end"] + 1
            )
    finally:
        try:
            client.kill(name)
        except FerryError as exc:  # say so, but keep the numbers
            failed.append(f"kill: {exc}")
    row = {
        "link": link,
        "size_mib": size,
        **how,
        "runs": len(samples),
        "state": "failed" if failed else "ok",
        "cell_s": round(time.monotonic() - t0, 1),
        "load1_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "measured": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "samples": samples,
    }
    if failed:
        row["errors"] = failed
    if samples:
        for col in (*COLUMNS, "total_s", "bytes"):
            row[col] = round(statistics.median(x[col] for x in samples), 3)
        gaps = [x["observed_gap_ms"] for x in samples if x.get("observed_gap_ms") is not None]
        row["observed_gap_ms"] = round(statistics.median(gaps), 1) if gaps else None
        rate = [x["bytes"] / MB / (x["wire_ms"] / 1000) for x in samples if x.get("wire_ms")]
        row["mb_s"] = round(statistics.median(rate), 1) if rate else None
        row["downtime_ms_min"] = min(x["downtime_ms"] for x in samples)
        row["downtime_ms_max"] = max(x["downtime_ms"] for x in samples)
        row["sent_as"] = "/".join(sorted({sent_as(x) for x in samples}))
    print_table([row], header=not hasattr(run_cell, "_printed"))
    run_cell._printed = True  # type: ignore[attr-defined]
    return row


def sent_as(sample: dict[str, Any]) -> str:
    """How a migration's images travelled: pages streamed, or all as files (and their codec)."""
    return "stream" if sample["streamed"] else f"files {sample['codec']}"


def axes_of(r: dict[str, Any]) -> tuple[str, str, str]:
    """A row's page server, compression and data; rows from before these axes were
    measured with files, uncompressed, of the fill holder."""
    return r.get("page_server", "off"), r.get("compression", "none"), r.get("data", "fill")


# -- output ----------------------------------------------------------------------------
def print_table(rows: list[dict[str, Any]], header: bool = True) -> None:
    if header:
        print(
            f"{'size':>8} {'link':>8} {'ps/comp/data':>18} {'sent as':>10} {'downtime':>9} {'seen':>7} {'criu':>7} {'wire':>8} {'restore':>8} "
            f"{'overhead':>9} {'total':>7} {'bytes':>11} {'MB/s':>7}  (ms; medians of runs)"
        )
    for r in rows:
        if "downtime_ms" not in r:
            print(
                f"{r['size_mib']:>5} MiB {r['link']:>8} {'/'.join(axes_of(r)):>18}  {r['state']}: "
                f"{r.get('why') or '; '.join(r.get('errors', []))}"
            )
            continue
        flag = "" if r["state"] == "ok" else f"  {r['state']}: {'; '.join(r['errors'])}"
        print(
            f"{r['size_mib']:>5} MiB {r['link']:>8} {'/'.join(axes_of(r)):>18} "
            f"{r.get('sent_as', ''):>10} {r['downtime_ms']:>9.0f} "
            f"{r.get('observed_gap_ms') or 0:>7.0f} "
            f"{r['criu_freeze_ms']:>7.0f} {r['wire_ms']:>8.0f} {r['restore_ms']:>8.0f} "
            f"{r['overhead_ms']:>9.0f} {r['total_s'] * 1000:>7.0f} {int(r['bytes']):>11} "
            f"{r['mb_s'] or 0:>7.1f}{flag}",
            flush=True,
        )


def markdown(doc: dict[str, Any]) -> str:
    """The saved rows as a markdown table (ms unless said; medians over the runs)."""
    out = [
        (
            "| size | link | page server / compression / data | sent as | downtime | seen "
            "| criu freeze | wire | restore | overhead | total | bytes | MB/s |"
        ),
        "|---:|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in doc["rows"]:
        size = f"{r['size_mib']} MiB" if r["size_mib"] else "counter"
        if "downtime_ms" not in r:
            why = r.get("why") or "; ".join(r.get("errors", []))
            out.append(
                f"| {size} | {r['link']} | {' / '.join(axes_of(r))} | {r['state']}: {why} "
                "||||||||||"
            )
            continue
        out.append(
            f"| {size} | {r['link']} | {' / '.join(axes_of(r))} | {r.get('sent_as', 'files none')} "
            f"| {r['downtime_ms']:.0f} | {r.get('observed_gap_ms') or 0:.0f} "
            f"| {r['criu_freeze_ms']:.0f} | {r['wire_ms']:.0f} | {r['restore_ms']:.0f} "
            f"| {r['overhead_ms']:.0f} | {r['total_s'] * 1000:.0f} | {r['bytes'] / 1e6:.1f} MB "
            f"| {r['mb_s'] or 0:.0f} |"
        )
    return "\n".join(out)


def write_json(
    path: Path,
    rows: list[dict[str, Any]],
    links: list[str],
    args: argparse.Namespace,
    elapsed: float,
) -> None:
    old: dict[str, Any] = {}
    if path.exists():
        try:
            old = json.loads(path.read_text())
        except ValueError:
            old = {}
    fresh = {(r["link"], r["size_mib"], axes_of(r)) for r in rows}
    kept = [
        r
        for r in old.get("rows", [])
        if (r.get("link"), r.get("size_mib"), axes_of(r)) not in fresh
    ]
    order = {"loopback": 0, "1gbit": 1, "100mbit": 2}
    merged = sorted(kept + rows, key=lambda r: (order.get(r["link"], 9), r["size_mib"], axes_of(r)))
    doc = {
        "benchmark": "cold migration downtime and its parts (tasks.core.summary.downtime)",
        "units": {
            "*_ms": "milliseconds, median over runs",
            "total_s": "submit to done, median",
            "bytes": "bytes on the data plane per migration, median",
            "mb_s": "bytes / wire_ms, in 10^6 bytes per second, median",
            "observed_gap_ms": "longest silence of the container's 50 ms ticker around "
            "the migration, less 50 ms: the downtime as the workload saw it, median",
            "size_mib": "MiB of non-zero memory the container holds (0: the counter alone)",
            "page_server, compression, data": "the cell's axes (see the module docstring); "
            "rows without them predate them: files, uncompressed, fill",
            "sent_as": "stream: the pages went to the destination's page server; "
            "files CODEC: every image as a file",
        },
        "machine": machine(),
        "generated": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "last_command": " ".join(["benchmarks/cold.py", *sys.argv[1:]]),
        "last_run_s": round(elapsed, 1),
        "runs": args.runs,
        "rows": merged,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    sys.exit(main())
