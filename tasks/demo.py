"""``ferry demo``: a counting container crosses a cluster of nodes on this machine.

Everything runs on the embedded default: an embedded Redis, N node workers
(each with its own state dir, queues and data-plane listener), a coordinator
and Flower. With real CRIU (root and a passing ``criu check``) the counter is
a real process; otherwise the demo says why and runs the ``sim`` runtime,
labelled as simulated.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console

from tasks.client import Ferry
from tasks.settings import Settings
from tasks.summary import one_line

COUNTER = ("import time\ni = 0\nwhile True:\n    print('tick', i, flush=True)\n"
           "    i += 1\n    time.sleep(0.1)\n")
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


def run_demo(count: int = 3, keep: bool = False, flower_port: int = 5555) -> int:
    base = Path(tempfile.mkdtemp(prefix="ferry-demo-"))
    ok, why = criu_usable()
    runtime = "criu" if ok else "sim"
    if not ok:
        con.print(f"[yellow]CRIU cannot run here ({why}): this demo uses the SIMULATED runtime[/]")
    env = {k: v for k, v in os.environ.items() if not k.startswith("FERRY_")}
    env.update(FERRY_STATE_DIR=str(base), FERRY_RUNTIME=runtime, FERRY_HEARTBEAT_S="0.5")
    settings = Settings.from_env(env)
    client = Ferry(settings)  # starts the embedded Redis in base
    env.update(FERRY_SECRET=client.settings.secret)
    procs: list[subprocess.Popen[bytes]] = []
    nodes = [f"node{i}" for i in range(1, count + 1)]
    auth = f"ferry:{secrets.token_urlsafe(9)}"

    def spawn(name: str, *argv: str) -> None:
        log = open(base / f"{name}.log", "ab")
        procs.append(subprocess.Popen([sys.executable, "-m", "tasks.cli", *argv], env=env,
                                      stdout=log, stderr=subprocess.STDOUT))

    try:
        con.print(f"state dir {base}; embedded Redis on {base / 'redis.sock'}")
        spawn("coordinator", "coordinator")
        for n in nodes:
            spawn(n, "worker", "--node", n)
        spawn("flower", "flower", "--port", str(flower_port), "--basic-auth", auth)
        con.print(f"Flower on http://127.0.0.1:{flower_port} (user:password {auth})")
        _wait_nodes(client, nodes)
        info = client.run(nodes[0], [sys.executable, "-u", "-c", COUNTER], name="counter")
        log = Path(info["log"])
        con.print(f"started container 'counter' on {nodes[0]} ({runtime}); log {log}")
        time.sleep(2)
        for dst in nodes[1:] + ([nodes[0]] if count == 2 else []):
            before = last_tick(log)
            m = client.migrate("counter", dst).wait(timeout=120)
            time.sleep(1.0)
            after = last_tick(log)
            con.print(one_line(m))
            if m.state.value != "done":
                return 1
            con.print(f"  counter was at {before} before, now at {after} on {dst}: "
                      f"it went on where it stopped" if after is not None and before is not None
                      and after > before else f"  counter: before {before}, after {after}")
        con.print("[green]demo done[/]" + ("" if keep else "; tearing the cluster down"))
        if keep:
            con.print(f"the cluster keeps running: FERRY_STATE_DIR={base} ferry ps")
            return 0
        return 0
    finally:
        if not keep:
            try:
                client.kill("counter")
            except Exception:  # the container may already be gone; the demo ends either way
                pass
            for p in procs:
                p.terminate()
            for p in procs:
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
            from tasks.broker import stop_embedded

            stop_embedded(base)


def _wait_nodes(client: Ferry, nodes: list[str], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        up = {n["name"] for n in client.nodes() if n["alive"]}
        ping = client.app.control.ping(timeout=0.5) or []
        workers = " ".join(k for r in ping for k in r)
        if set(nodes) <= up and all(f"urgent.{n}@" in workers for n in nodes) and \
                client.store.r.exists("ferry:coordinator"):
            return
        time.sleep(0.3)
    raise TimeoutError(f"the demo's nodes did not come up in {timeout:.0f} s")
