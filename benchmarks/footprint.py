"""How light ferry is: its commands' wall and CPU time, an idle node's and the
coordinator's memory, beside the targets a Raspberry Pi cluster sets (#18).

    sudo .venv/bin/python benchmarks/footprint.py                       # this checkout
    sudo .venv/bin/python benchmarks/footprint.py --trees /work/main,.  # before and after
    .venv/bin/python benchmarks/footprint.py --markdown                 # the saved table

For each checkout (``--trees``, measured in turn in one run, so a before and
an after share the machine's load) a coordinator and two real CRIU nodes start
from that checkout on the Redis at ``--redis`` (its database is flushed), and
once the node is up and idle:

- ``ferry ps``, ``ferry nodes``, ``ferry status``: the median wall time of
  ``--runs`` calls, each pinned to one core (taskset), as a Pi's slower cores
  would feel the import and start-up work;
- ``ferry --help``: the median CPU time (user + system) of a call, pinned;
- the idle node: the RSS and PSS of the worker's whole process tree, and how
  many processes it is;
- the coordinator: the same, for its tree;
- ``ferry migrate --no-wait`` of a small real container (cold, back and forth
  between the two nodes): the median wall and CPU time of the submission.

Bytecode is compiled once (into a scratch PYTHONPYCACHEPREFIX), as it is for
an installed ferry, and each command runs once before it is timed.
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
from typing import Any

import psutil
import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.machine import machine
from tasks.store.migrations import Store

OUT = ROOT / "docs" / "benchmarks" / "footprint.json"
NODE, PEER = "fp-1", "fp-2"
SLEEPER = "import time\nwhile True: time.sleep(1)"
MIB = 1 << 20
# metric: (target, unit, what), targets from issue #18
TARGETS: dict[str, tuple[float, str, str]] = {
    "ps_s": (0.2, "s", "`ferry ps` wall, pinned"),
    "nodes_s": (0.2, "s", "`ferry nodes` wall, pinned"),
    "status_s": (0.2, "s", "`ferry status` wall, pinned"),
    "migrate_s": (0.3, "s", "`ferry migrate --no-wait` wall, pinned"),
    "migrate_cpu_s": (0, "CPU-s", "`ferry migrate --no-wait` CPU, pinned"),
    "help_cpu_s": (0, "CPU-s", "`ferry --help` CPU, pinned"),
    "node_rss_mib": (80.0, "MiB", "idle node RSS (all its processes)"),
    "node_pss_mib": (80.0, "MiB", "idle node PSS"),
    "node_procs": (0, "", "idle node processes"),
    "node_rss_each_mib": (0, "MiB", "idle node RSS per process (supervisor, workers)"),
    "coordinator_rss_mib": (60.0, "MiB", "coordinator RSS"),
}


def pin() -> list[str]:
    return ["taskset", "-c", "0"] if shutil.which("taskset") else []


def timed(argv: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float, str]:
    """(wall s, CPU s, stdout) of one run of ``argv``; SystemExit if it fails."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if proc.returncode != 0:
            raise SystemExit(f"error: {' '.join(argv)} failed: {err.read().decode().strip()}")
        return wall, usage.ru_utime + usage.ru_stime, out.read().decode()


def tree_memory(pid: int) -> tuple[float, float, list[float]]:
    """(RSS MiB, PSS MiB, each process's RSS MiB) of ``pid`` and all its descendants."""
    top = psutil.Process(pid)
    each = [p.memory_full_info() for p in (top, *top.children(recursive=True))]
    return (
        sum(m.rss for m in each) / MIB,
        sum(m.pss for m in each) / MIB,
        [round(m.rss / MIB, 1) for m in each],
    )


def measure(tree: Path, url: str, runs: int) -> dict[str, Any]:
    """Start a coordinator and two nodes from ``tree``; time its commands, weigh its processes."""
    r = redis.Redis.from_url(url, decode_responses=True)
    r.flushdb()
    base = Path(tempfile.mkdtemp(prefix="ferry-bench-footprint-"))
    env = {
        **{
            k: v
            for k, v in os.environ.items()
            if not k.startswith("FERRY_") and k != "PYTHONDONTWRITEBYTECODE"
        },
        # compiled once, as an installed ferry is, without writing into the checkout
        "PYTHONPYCACHEPREFIX": str(base / "pycache"),
        "FERRY_BROKER_URL": url,
        "FERRY_RESULT_BACKEND": url,
        "FERRY_REDIS_URL": url,
        "FERRY_SECRET": secrets.token_hex(32),
        "FERRY_STATE_DIR": str(base),
        "FERRY_ALLOW_PIPE_MAX_SIZE": "1",
        "PYTHONPATH": str(tree),
    }
    cli = [sys.executable, "-m", "tasks.api.cli"]
    logs = open(base / "log", "wb")  # noqa: SIM115 (the children keep writing to it)
    coord = subprocess.Popen([*cli, "coordinator"], env=env, cwd=tree, stdout=logs, stderr=logs)
    node, peer = (
        subprocess.Popen([*cli, "worker", "--node", n], env=env, cwd=tree, stdout=logs, stderr=logs)
        for n in (NODE, PEER)
    )
    procs = (node, peer, coord)
    try:
        deadline = time.monotonic() + 90
        keys = (f"ferry:node:{NODE}", f"ferry:node:{PEER}", "ferry:coordinator")
        while not all(r.exists(k) for k in keys):
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                raise SystemExit(f"error: the cluster from {tree} did not come up: see {base}/log")
            time.sleep(0.2)
        time.sleep(3.0)  # idle: the probe is done, the workers wait for tasks
        row: dict[str, Any] = {"tree": str(tree), "commit": commit(tree)}
        row["load_before"] = round(os.getloadavg()[0], 2)
        for argv in (["ps"], ["nodes"], ["status"], ["--help"]):  # warm: bytecode, page cache
            timed([*cli, *argv], env, tree)
        for key, argv in (("ps_s", ["ps"]), ("nodes_s", ["nodes"]), ("status_s", ["status"])):
            row[key] = statistics.median(
                timed([*pin(), *cli, *argv], env, tree)[0] for _ in range(runs)
            )
        row["help_cpu_s"] = statistics.median(
            timed([*pin(), *cli, "--help"], env, tree)[1] for _ in range(runs)
        )
        row["node_rss_mib"], row["node_pss_mib"], each = tree_memory(node.pid)
        row["node_procs"], row["node_rss_each_mib"] = len(each), each
        row["coordinator_rss_mib"], _, row["coordinator_rss_each_mib"] = tree_memory(coord.pid)
        row["migrate_s"], row["migrate_cpu_s"] = migrations(cli, env, tree, Store(r), runs)
        row["load_after"] = round(os.getloadavg()[0], 2)
        return row
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
        logs.close()
        shutil.rmtree(base, ignore_errors=True)


def migrations(
    cli: list[str], env: dict[str, str], tree: Path, store: Store, runs: int
) -> tuple[float, float]:
    """Median (wall s, CPU s) of ``ferry migrate --no-wait`` of a small real container
    moving back and forth (cold), each submitted once the previous one is done."""
    timed(
        [*cli, "run", "--node", NODE, "--name", "fpc", "--", sys.executable, "-c", SLEEPER],
        env,
        tree,
    )
    walls, cpus = [], []
    try:
        for i in range(runs + 1):  # the first warms up
            dst = PEER if i % 2 == 0 else NODE
            argv = [*pin(), *cli, "migrate", "fpc", "--to", dst, "--no-wait", "--strategy", "cold"]
            wall, cpu, out = timed(argv, env, tree)
            mid = out.split()[-1]
            deadline = time.monotonic() + 120
            while not (m := store.get(mid)).state.final:
                if time.monotonic() > deadline:
                    raise SystemExit(f"error: migration {mid} did not finish")
                time.sleep(0.1)
            if m.state.value != "done":
                raise SystemExit(f"error: migration {mid} ended {m.state.value}: {m.errors}")
            if i:
                walls.append(wall)
                cpus.append(cpu)
    finally:
        rows = json.loads(timed([*cli, "ps", "--json"], env, tree)[2])
        for c in rows:
            if c["name"] == "fpc" and c["pid"] > 0:
                os.kill(c["pid"], 9)
    return statistics.median(walls), statistics.median(cpus)


def commit(tree: Path) -> str:
    done = subprocess.run(
        ["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    )
    return done.stdout.strip()


def show(value: float | list[float], unit: str) -> str:
    if isinstance(value, list):
        return " + ".join(f"{v:.0f}" for v in value) + f" {unit}"
    return f"{value:.3g} {unit}".strip()


def markdown(data: dict[str, Any]) -> str:
    rows = data["rows"]
    head = (
        "| metric | target | "
        + " | ".join(f"{Path(r['tree']).name} ({r['commit']})" for r in rows)
        + " |"
    )
    lines = [head, "|---|---|" + "---|" * len(rows)]
    for key, (target, unit, what) in TARGETS.items():
        goal = f"<= {target:g} {unit}" if target else ""
        vals = " | ".join(show(r[key], unit) for r in rows)
        lines.append(f"| {what} | {goal} | {vals} |")
    m = data["machine"]
    loads = ", ".join(f"{r['load_before']}-{r['load_after']}" for r in rows)
    lines += [
        "",
        f"{m['cpus']} CPUs, Python {m['python']}, medians of {data['runs']} calls each; "
        f"load average {loads}",
    ]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trees", default=str(ROOT), help="checkouts to measure, comma-separated")
    db = os.environ.get("FERRY_TEST_DB", "14")
    ap.add_argument("--redis", default=f"redis://127.0.0.1:6379/{db}", help="flushed first")
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--markdown", action="store_true", help="print the saved table")
    args = ap.parse_args()
    if args.markdown:
        print(markdown(json.loads(OUT.read_text())))
        return 0
    if os.geteuid() != 0:
        print("footprint: needs root (the node runs real CRIU)", file=sys.stderr)
        return 2
    rows = [measure(Path(t).resolve(), args.redis, args.runs) for t in args.trees.split(",")]
    # merged by commit: a before measured earlier keeps its column beside a new after
    kept = json.loads(OUT.read_text())["rows"] if OUT.exists() else []
    rows = [r for r in kept if r["commit"] not in {n["commit"] for n in rows}] + rows
    data = {
        "what": "ferry's footprint beside the Pi targets (#18)",
        "machine": machine(),
        "runs": args.runs,
        "rows": rows,
    }
    OUT.write_text(json.dumps(data, indent=1) + "\n")
    print(markdown(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
