"""``ferry demo``: a counting container crosses a cluster of nodes on this machine.

Everything runs on the embedded default: an embedded Redis, N node workers
(each with its own state dir, queues and data-plane listener), a coordinator
and Flower. With real CRIU (root and a passing ``criu check``) the counter is
a real process; otherwise the demo says why and runs the ``sim`` runtime,
labelled as simulated.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console

from tasks.api.localcluster import LocalCluster
from tasks.config.broker import stop_embedded
from tasks.core.summary import one_line
from workers.errors import FerryError

COUNTER = (
    "import time\ni = 0\nwhile True:\n    print('tick', i, time.time(), flush=True)\n"
    "    i += 1\n    time.sleep(0.1)\n"
)
con = Console(stderr=True, highlight=False)


def criu_usable() -> tuple[bool, str]:
    if os.geteuid() != 0:
        return False, "not root: CRIU needs root"
    if not shutil.which("criu"):
        return False, "criu is not installed: run ops/install-criu.sh"
    proc = subprocess.run(["criu", "check"], capture_output=True, text=True)
    if proc.returncode != 0:
        return False, "criu check fails: " + (proc.stdout + proc.stderr).strip().splitlines()[-1]
    return True, ""


def last_tick(log: Path) -> int | None:
    try:
        lines = [ln for ln in log.read_text().splitlines() if ln.startswith("tick ")]
    except OSError:
        return None
    return int(lines[-1].split()[1]) if lines else None


def around(values: list[int], at: int, n: int = 3) -> str:
    """The counter's values around ``at``, the last one printed before the freeze."""
    i = values.index(at) if at in values else len(values) - 1
    return (
        " ".join(map(str, values[max(0, i - n + 1) : i + 1]))
        + " | "
        + " ".join(map(str, values[i + 1 : i + 1 + n]))
    )


def run_demo(count: int = 3, keep: bool = False, flower_port: int = 5555) -> int:
    """Start a local cluster, move a counter across it, show that it went on."""
    base = Path(tempfile.mkdtemp(prefix="ferry-demo-"))
    ok, why = criu_usable()
    runtime = "criu" if ok else "sim"
    if not ok:
        con.print(f"[yellow]CRIU cannot run here ({why}): this demo uses the SIMULATED runtime[/]")
    env = {k: v for k, v in os.environ.items() if not k.startswith("FERRY_")}
    env["FERRY_RUNTIME"] = runtime
    cluster = LocalCluster(base, env)
    nodes = [f"node{i}" for i in range(1, count + 1)]
    auth = f"ferry:{secrets.token_urlsafe(9)}"
    try:
        client = cluster.client  # starts the embedded Redis in base
        con.print(f"state dir {base}; embedded Redis on {base / 'redis.sock'}")
        cluster.start_coordinator()
        for n in nodes:
            cluster.start_node(n)
        cluster.start_flower(flower_port, auth)
        con.print(f"Flower on http://127.0.0.1:{flower_port} (user:password {auth})")
        cluster.wait_ready(nodes)
        info = client.run(nodes[0], [sys.executable, "-u", "-c", COUNTER], name="counter")
        log = Path(info["log"])
        label = "real CRIU" if ok else "SIMULATED"
        con.print(f"started container 'counter' on {nodes[0]} ({label}); log {log}")
        time.sleep(2)
        for dst in nodes[1:] + ([nodes[0]] if count == 2 else []):
            m = client.migrate("counter", dst).wait(timeout=120)
            con.print(one_line(m))
            if m.state.value != "done":
                return 1
            time.sleep(1.0)
            lines = ticks(log)
            values = [v for v, _ in lines]
            frozen = m.results["dump"]["freeze_start"]
            at = max((v for v, t in lines if t <= frozen), default=values[0])
            steady = values == list(range(len(values)))
            con.print(
                f"  counter around the freeze ({m.src} | {dst}): {around(values, at)}"
                + ("; no value lost or repeated" if steady else "; [red]NOT continuous[/]")
            )
        con.print("[green]demo done[/]" + ("" if keep else "; tearing the cluster down"))
        if keep:
            con.print(f"the cluster keeps running: FERRY_STATE_DIR={base} ferry ps")
        return 0
    finally:
        if not keep:
            with contextlib.suppress(
                FerryError
            ):  # the container may already be gone; the demo ends either way
                cluster.client.kill("counter")
            cluster.stop()
            stop_embedded(base)
            shutil.rmtree(base, ignore_errors=True)  # its logs and images: nothing is left behind


def ticks(log: Path) -> list[tuple[int, float]]:
    """The counter's (value, time printed) lines from its log."""
    try:
        lines = log.read_text().splitlines()
    except OSError:
        return []
    return [
        (int(p[1]), float(p[2]))
        for p in (ln.split() for ln in lines)
        if len(p) == 3 and p[0] == "tick"
    ]
