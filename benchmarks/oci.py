"""OCI containers moved by ferry, by runc itself and by Podman itself, side by side.

    sudo .venv/bin/python benchmarks/oci.py                    # 64 and 256 MiB, 3 runs each
    sudo .venv/bin/python benchmarks/oci.py --sizes 64,256,1024
    .venv/bin/python benchmarks/oci.py --markdown              # the saved table

One container image for all (tests/integration/ocirootfs.py: the host's python3
and its libraries) running benchmarks/pauses.py's workload: SIZE MiB of random
bytes, 1 % of its pages rewritten and ``time.time()`` printed every 10 ms, so
its longest silence less its median tick before the move is the pause it felt. On loopback:

- ``ferry cold`` / ``ferry delta`` / ``ferry postcopy``: two ferry nodes (FERRY_RUNTIME=oci) on this
  host, through the real coordinator and workers; ferry's own parts of the
  final pause (tasks.core.summary.final_pause) beside it. ``ferry cold`` streams
  its pages during the dump (the page server's ``auto`` on loopback),
  ``ferry cold files`` writes them and sends them as files (``off``).
- ``runc``: ``runc checkpoint`` on one runc root, the image directory copied,
  ``runc restore --detach`` on another (the container's stdio on pipes kept by
  workers.runtimes.ocistdio, as ferry keeps them).
- ``podman``: ``podman container checkpoint --export`` (uncompressed), the
  archive copied, the container removed, ``podman container restore --import``
  of the copy (``--runtime runc``; one store on one host: an import keeps the
  container's ID, and with it paths that only a node with the same store
  layout has).

- ``ferry podman``: ferry moving an adopted Podman container cold between its
  two nodes, each with a Podman of its own (tests/integration/podmanimage.py:
  a private mount namespace per worker, the same store paths), the image on
  both: Podman's export and import with ferry's data plane and phases between.

Each row is the median of ``--runs`` moves, back and forth, the systems taking
turns move by move (other work on the machine weighs on all alike; each sample
records the load average); ``x runc`` divides by runc's median of the same size
in the same run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.cold import NODES, local_cluster
from benchmarks.machine import machine
from benchmarks.pauses import WORKLOAD, felt_ms, ticks_in, times
from tasks.api.client import Ferry
from tasks.core.summary import final_pause
from tests.integration.ocirootfs import build_rootfs
from tests.integration.podmanimage import (
    COMMON,
    TAG,
    NodePodman,
    import_image,
    node_stores,
    podman_run_args,
)
from workers.errors import FerryError
from workers.runtimes.ocibundle import config, write_bundle
from workers.runtimes.podmancli import Podman

SYSTEMS = (
    "runc",
    "podman",
    "ferry-cold",
    "ferry-cold-files",
    "ferry-delta",
    "ferry-postcopy",
    "ferry-podman",
)
FERRY = {  # ferry's own movers: strategy and page-server mode
    "ferry-cold": ("cold", "on"),  # the pages stream during the dump
    "ferry-cold-files": ("cold", "off"),  # the pages written here, then sent as files
    "ferry-delta": ("delta", "auto"),
    "ferry-postcopy": ("postcopy", "auto"),
}
PARTS = ("dump_ms", "copy_ms", "restore_ms", "overhead_ms")
KEEPER = [sys.executable, "-S", "-m", "workers.runtimes.ocistdio"]  # as the oci runtime runs it
Sample = dict[str, Any]


def argv_of(size: int) -> list[str]:
    return ["/usr/bin/python3", "-S", "-u", "-c", WORKLOAD, str(size)]


def limit(size: int) -> int:
    """The container's memory limit: room for the workload's two copies while it starts."""
    return (2 * size + 128) << 20


# -- runc by hand ----------------------------------------------------------------------
def run_runc(base: Path, rootfs: Path, size: int, runs: int) -> Iterator[Sample]:
    name, log = f"bench-runc-{size}", str(base / f"runc-{size}.log")
    roots = (base / "runc-a", base / "runc-b")
    write_bundle(base / "bundle", config(name, rootfs, argv_of(size), limit(size)))

    def runc(root: Path, *args: str, stdio: bool = False) -> float:
        t0 = time.monotonic()
        cmd = ["runc", "--root", str(root), *args]
        if stdio:  # run/restore --detach: the container's stdio on pipes kept for it
            cmd = [*KEEPER, "--log", log, "--", *cmd]
        subprocess.run(cmd, check=True, capture_output=True, cwd=ROOT, timeout=300)
        return (time.monotonic() - t0) * 1000

    runc(roots[0], "run", "--bundle", str(base / "bundle"), "--detach", name, stdio=True)
    try:
        ticks_in(log, 200, 120)
        for i in range(runs):
            src, dst = roots[i % 2], roots[(i + 1) % 2]
            here, there = base / f"runc-{size}-{i}", base / f"runc-{size}-{i}-there"
            t0 = time.time()
            dump = runc(
                src, "checkpoint", "--image-path", str(here), "--work-path", str(here), name
            )
            c0 = time.monotonic()
            shutil.copytree(here, there)
            copy = (time.monotonic() - c0) * 1000
            restore = runc(
                dst, "restore", "--detach", "--image-path", str(there), "--work-path",
                str(there / "work"), "--bundle", str(base / "bundle"), name, stdio=True,
            )  # fmt: skip
            subprocess.run(["runc", "--root", str(src), "delete", name], check=False)  # if left
            time.sleep(0.5)  # the workload's first ticks after the restore
            yield sample(dump + copy + restore, felt_ms(log, t0, time.time()), dump, copy, restore)
            shutil.rmtree(here)
    finally:
        for root in roots:
            subprocess.run(["runc", "--root", str(root), "delete", "--force", name], check=False)


# -- podman by hand --------------------------------------------------------------------
def run_podman(base: Path, image: str, podman: Podman, size: int, runs: int) -> Iterator[Sample]:
    name, log = f"bench-podman-{size}", base / f"podman-{size}.log"
    podman.ok(
        "run", "-d", "--name", name, *podman_run_args(), "--memory", str(limit(size)),
        image, *argv_of(size),
    )  # fmt: skip
    try:
        wait_ticks(podman, name)
        for i in range(runs):
            tar, there = base / f"podman-{size}-{i}.tar", base / f"podman-{size}-{i}-there.tar"
            t0 = time.time()
            dump = timed(podman.checkpoint, name, tar)
            copy = timed(shutil.copyfile, tar, there)
            podman.remove(name)  # gone from its store, as from a source node's
            restore = timed(podman.restore_import, there)
            time.sleep(0.5)
            log.write_text(podman.ok("logs", name))
            yield sample(
                dump + copy + restore, felt_ms(str(log), t0, time.time()), dump, copy, restore
            )
            tar.unlink()
            there.unlink()
    finally:
        podman.call("container", "rm", "--force", name)


def wait_ticks(podman: Podman, name: str) -> None:
    """Until the workload in Podman container ``name`` has ticked 200 times."""
    deadline = time.monotonic() + 120
    while len(times(podman.ok("logs", name))) < 200:
        if time.monotonic() > deadline:
            raise SystemExit(f"error: the workload in podman container {name} does not tick")
        time.sleep(0.5)


def timed(step: Callable[..., object], *args: object) -> float:
    t0 = time.monotonic()
    step(*args)
    return (time.monotonic() - t0) * 1000


# -- ferry -----------------------------------------------------------------------------
def run_ferry(client: Ferry, rootfs: Path, size: int, system: str, runs: int) -> Iterator[Sample]:
    strategy, page_server = FERRY[system]
    nodes = sorted(n.name for n in client.nodes())[:2]
    name = f"bench-{system}-{size}"
    labels = {"oci.rootfs": str(rootfs), "oci.memory": str(limit(size))}
    info = client.run(nodes[0], argv_of(size), name=name, labels=labels)
    try:
        ticks_in(info["log"], 200, 120)
        for i in range(runs):
            to = nodes[(i + 1) % 2]
            h = client.migrate(name, to, strategy=strategy, page_server=page_server)
            m = h.wait(timeout=300)
            time.sleep(0.5)
            if m.state.value != "done":
                raise SystemExit(f"error: ferry {strategy} {size} MiB: {'; '.join(m.errors)}")
            p = final_pause(m) or {}
            yield (
                sample(
                    p["final_pause_ms"],
                    felt_ms(info["log"], m.created, m.updated + 0.5),
                    p["criu_freeze_ms"],
                    p["wire_ms"] + p["delta_ms"],
                    p["restore_ms"] + p["rebuild_ms"],
                    p["overhead_ms"],
                    dump_wall_ms=m.results["dump"].get("wall_ms"),
                )
            )
    finally:
        client.kill(name)


def run_ferry_podman(
    base: Path, client: Ferry, pods: list[NodePodman], size: int, runs: int
) -> Iterator[Sample]:
    """Ferry moving an adopted Podman container cold (Podman's export and import, ferry's
    data plane between), each node with a Podman of its own."""
    name, log = f"bench-fpodman-{size}", base / f"fpodman-{size}.log"
    pods[0].ok(
        "run", "-d", "--name", name, *podman_run_args(), "--memory", str(limit(size)),
        TAG, *argv_of(size),
    )  # fmt: skip
    try:
        wait_ticks(pods[0], name)
        client.adopt(NODES[0], f"podman:{name}")
        for i in range(runs):
            m = client.migrate(name, NODES[(i + 1) % 2], strategy="cold").wait(timeout=300)
            time.sleep(0.5)
            if m.state.value != "done":
                raise SystemExit(f"error: ferry podman {size} MiB: {'; '.join(m.errors)}")
            p = final_pause(m) or {}
            log.write_text(pods[(i + 1) % 2].ok("logs", name))
            yield (
                sample(
                    p["final_pause_ms"],
                    felt_ms(str(log), m.created, m.updated + 0.5),
                    p["criu_freeze_ms"],
                    p["wire_ms"],
                    p["restore_ms"],
                    p["overhead_ms"],
                    dump_wall_ms=m.results["dump"].get("wall_ms"),
                )
            )
    finally:
        with contextlib.suppress(FerryError):
            client.kill(name)


def sample(pause: float, felt: float | None, *parts: float, **extra: Any) -> Sample:
    """One move: the pause its mover reports (for runc and podman: the three steps'
    sum), what the workload felt, and the parts."""
    return {
        "pause_ms": round(pause, 1),
        "felt_ms": felt,
        **dict(zip(PARTS, parts, strict=False)),
        "load1": round(os.getloadavg()[0], 2),  # other work on the machine: say how much
        **extra,
    }


# -- the run ---------------------------------------------------------------------------
def rows_of(results: dict[tuple[str, int], list[Sample]]) -> list[dict[str, Any]]:
    def med(samples: list[Sample], key: str) -> float | None:
        xs = [s[key] for s in samples if s.get(key) is not None]
        return round(statistics.median(xs), 1) if xs else None

    rows = []
    for (system, size), samples in results.items():
        row: dict[str, Any] = {"system": system, "size_mib": size, "runs": len(samples)}
        row |= {k: med(samples, k) for k in ("pause_ms", "felt_ms", *PARTS)}
        base = results.get(("runc", size))
        for key in ("pause_ms", "felt_ms"):
            ref = med(base, key) if base else None
            row[f"{key}_x_runc"] = round(row[key] / ref, 2) if ref and row[key] else None
        loads = [x["load1"] for x in samples]
        row["load1_range"] = [min(loads), max(loads)] if loads else None
        row["samples"] = samples
        rows.append(row)
    return rows


def markdown(doc: dict[str, Any]) -> str:
    """The saved rows as a markdown table (ms, medians over the runs)."""

    def ms(v: float | None) -> str:
        return "" if v is None else f"{v:.0f}"

    def x(v: float | None) -> str:
        return "" if v is None else f"{v:.2f}x"

    out = [
        "| MiB | mover | pause | x runc | workload felt | x runc | dump | copy/wire | restore "
        "| overhead |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in doc["rows"]:
        out.append(
            f"| {r['size_mib']} | {r['system']} | {ms(r['pause_ms'])} | {x(r['pause_ms_x_runc'])} "
            f"| {ms(r['felt_ms'])} | {x(r['felt_ms_x_runc'])} | {ms(r['dump_ms'])} "
            f"| {ms(r['copy_ms'])} | {ms(r['restore_ms'])} | {ms(r.get('overhead_ms'))} |"
        )
    loads = [x for r in doc["rows"] for x in r.get("load1_range") or []]
    if loads:
        out.append(
            f"\n{doc['runs']} runs each, medians (ms); load average {min(loads):.1f}-"
            f"{max(loads):.1f} on {doc['machine'].get('cpus', '?')} CPUs during the moves"
        )
    return "\n".join(out)


Mover = Callable[[int, int], Iterator[Sample]]  # (size, runs): one sample per move


def setup(
    stack: contextlib.ExitStack, base: Path, rootfs: Path, systems: list[str]
) -> dict[str, Mover]:
    """What moves a container, per system: the ferry cluster and the Podman stores up."""
    movers: dict[str, Mover] = {}
    podman = Podman(store=base / "podman")
    if "runc" in systems:
        movers["runc"] = lambda size, runs: run_runc(base, rootfs, size, runs)
    if "podman" in systems:
        image = import_image(podman, rootfs, base / "rootfs.tar")
        movers["podman"] = lambda size, runs: run_podman(base, image, podman, size, runs)
    if any(s.startswith("ferry-") for s in systems):
        extra = {"FERRY_RUNTIME": "oci", "FERRY_PODMAN_STORE": str(COMMON)}
        cluster = stack.enter_context(local_cluster(base, extra, node_stores(base, list(NODES))))
        pods = [NodePodman(store=COMMON, pid=cluster.procs[n].pid) for n in NODES]
        for system in FERRY:
            if system in systems:
                movers[system] = lambda size, runs, s=system: run_ferry(
                    cluster.client, rootfs, size, s, runs
                )
        if "ferry-podman" in systems:
            for pod in pods:
                import_image(pod, rootfs, base / "rootfs.tar")
            movers["ferry-podman"] = lambda size, runs: run_ferry_podman(
                base, cluster.client, pods, size, runs
            )
    return movers


def run_size(
    movers: dict[str, Mover], size: int, runs: int, results: dict[tuple[str, int], list[Sample]]
) -> None:
    """Each system's container of ``size`` MiB moved ``runs`` times, the systems taking
    turns move by move: other work on the machine weighs on all of them alike."""
    going = {system: mover(size, runs) for system, mover in movers.items()}
    try:
        for _ in range(runs):
            for system, moves in going.items():
                results.setdefault((system, size), []).append(next(moves))
                print(f"{system} {size} MiB: {results[system, size][-1]}", file=sys.stderr)
    finally:
        for moves in going.values():
            moves.close()  # each stops its container


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="benchmarks/oci.py", description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="64,256", help="MiB, comma separated")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--systems", default=",".join(SYSTEMS))
    ap.add_argument("--markdown", action="store_true", help="print the saved JSON as markdown")
    ap.add_argument("--dir", default=tempfile.gettempdir(), help="where state dirs go")
    ap.add_argument("--json", default=str(ROOT / "docs" / "benchmarks" / "oci.json"))
    args = ap.parse_args(argv)
    if args.markdown:
        print(markdown(json.loads(Path(args.json).read_text())))
        return 0
    if os.geteuid() != 0:
        print("error: runc, Podman and CRIU need root", file=sys.stderr)
        return 2
    systems, sizes = args.systems.split(","), [int(s) for s in args.sizes.split(",")]
    started = time.monotonic()
    base = Path(tempfile.mkdtemp(prefix="ferry-bench-oci-", dir=args.dir))
    results: dict[tuple[str, int], list[Sample]] = {}
    try:
        rootfs = build_rootfs(base / "rootfs")
        with contextlib.ExitStack() as stack:
            movers = setup(stack, base, rootfs, systems)
            for size in sizes:
                run_size(movers, size, args.runs, results)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    order = {s: i for i, s in enumerate(SYSTEMS)}
    rows = sorted(rows_of(results), key=lambda r: (r["size_mib"], order[r["system"]]))
    doc = {
        "benchmark": "OCI container moves on loopback: ferry's oci runtime vs runc and Podman",
        "units": {
            "pause_ms": "the mover's own pause: ferry's final pause; runc and podman: "
            "checkpoint + copy + restore, median",
            "felt_ms": "the workload's longest silence less its median 10 ms tick, median",
            "dump_ms, copy_ms, restore_ms, overhead_ms": "the pause's parts (ferry: "
            "tasks.core.summary.final_pause: criu freeze, wire (+delta), restore, the rest)",
            "*_x_runc": "the row's median over runc's of the same size",
        },
        "machine": machine(),
        "elapsed_s": round(time.monotonic() - started),
        "runs": args.runs,
        "rows": rows,
    }
    Path(args.json).write_text(json.dumps(doc, indent=1) + "\n")
    print(markdown(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
