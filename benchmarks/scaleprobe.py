"""What benchmarks/scale.py samples of a running cluster: Redis memory, each process's RSS and CPU."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from tasks.api.client import Ferry
from tasks.api.localcluster import LocalCluster
from workers.procs import tree


class Sampler(threading.Thread):
    """Every 0.5 s: Redis memory and every cluster process's RSS, by role."""

    def __init__(self, cluster: LocalCluster, client: Ferry) -> None:
        super().__init__(daemon=True)
        self.cluster, self.r, self.samples = cluster, client.store.r, []  # type: ignore[var-annotated]
        self.stop = threading.Event()

    def run(self) -> None:
        t0 = time.monotonic()
        while not self.stop.wait(0.5):
            rss = roles(self.cluster)
            self.samples.append(
                {
                    "t": round(time.monotonic() - t0, 2),
                    "redis_used": int(self.r.info("memory")["used_memory"]),
                    "rss": {k: sum(v) for k, v in rss.items()},
                }
            )


def roles(cluster: LocalCluster) -> dict[str, list[int]]:
    """RSS (bytes) of each cluster process, grouped: coordinator, supervisor, celery worker."""
    out: dict[str, list[int]] = {"coordinator": [], "supervisor": [], "celery worker": []}
    for key, proc in list(cluster.procs.items()):
        for pid in tree(proc.pid):
            role = (
                "coordinator"
                if key == "coordinator"
                else "supervisor"
                if pid == proc.pid
                else "celery worker"
            )
            out[role].append(_status(pid, "VmRSS") * 1024)
    return out


def _status(pid: int, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def cpu_s(cluster: LocalCluster) -> dict[str, float]:
    """CPU seconds used so far by the coordinator and by the nodes' processes."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {"coordinator": 0.0, "nodes": 0.0}
    for key, proc in list(cluster.procs.items()):
        for pid in tree(proc.pid):
            try:
                f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            out["coordinator" if key == "coordinator" else "nodes"] += (
                int(f[11]) + int(f[12])
            ) / tick
    return out


def redis_cpu(client: Ferry) -> float:
    info = client.store.r.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


def cpu_all(cluster: LocalCluster, client: Ferry) -> dict[str, float]:
    return {**cpu_s(cluster), "redis": redis_cpu(client)}


def idle_cpu(cluster: LocalCluster, client: Ferry, seconds: float = 10.0) -> dict[str, float]:
    """CPU per second the idle cluster uses (heartbeats, inventories, Celery's own polling)."""
    before = cpu_all(cluster, client)
    time.sleep(seconds)
    after = cpu_all(cluster, client)
    return {k: round((after[k] - before[k]) / seconds, 4) for k in before}
