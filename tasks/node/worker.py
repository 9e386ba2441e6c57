"""``ferry worker --node NAME``: one node's workers, listener and heartbeat.

The supervisor probes the node, starts its data-plane listener, registers the
node in Redis and keeps a heartbeat, and runs two Celery workers as child
processes: ``main`` on ``node.<name>`` and ``urgent`` on ``node.<name>.urgent``
(one slot, for freeze-window steps only). It is the child subreaper of every
container its workers start or restore, so none is left a zombie.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import redis

from tasks.config.broker import connect, resolve
from tasks.config.settings import Settings
from tasks.core.migration import State
from tasks.core.nodes import NodeRecord
from tasks.messaging.app import make_app, node_queue, worker_argv
from tasks.node.context import NodeContext
from tasks.node.phases import collect, prune_logs
from tasks.node.tasks import register
from tasks.store.migrations import Store
from workers import procs
from workers.criu.adapter import Criu
from workers.dataplane.throttle import Uplink
from workers.dataplane.transfer import GateLimits, TransferServer
from workers.errors import BadRequest, CorruptRecord, FerryError
from workers.ids import check_node_name
from workers.runtimes.base import Runtime
from workers.runtimes.criu import NOT_ROOT, CriuRuntime
from workers.runtimes.netns import bridge
from workers.runtimes.oci import OciRuntime
from workers.runtimes.podmancli import Podman
from workers.runtimes.sim import SimRuntime

log = logging.getLogger("ferry.worker")
PR_SET_CHILD_SUBREAPER = 36
PR_SET_PDEATHSIG = 1
ROLES = ("main", "urgent")
# How often a node drops the kept CRIU logs of migrations the coordinator pruned
# (one index lookup for all of them): often enough, and no load on Redis.
PRUNE_EVERY_S = 60.0


def node_dir(settings: Settings, node: str) -> Path:
    return settings.state_dir / "nodes" / node


RUNTIMES: dict[str, Callable[[Settings, Path], Runtime]] = {
    "criu": lambda s, home: CriuRuntime(
        home,
        s.container_root,
        Criu(s.criu_bin),
        s.sync_root_paths,
        s.allow_pipe_max_size,
        s.bridge,
    ),
    "oci": lambda s, home: OciRuntime(
        home,
        s.container_root,
        criu=Criu(s.criu_bin),
        podman=Podman(store=Path(s.podman_store) if s.podman_store else None),
        allow_pipe_max_size=s.allow_pipe_max_size,
        runc_root=Path(s.runc_root),
        cgroup_parent=f"/ferry/{home.name}",
    ),
    "sim": lambda s, home: SimRuntime(home, s.container_root, page_size=s.sim_page_size),
}


def make_runtime(settings: Settings, node: str) -> Runtime:
    """The driver the ``runtime`` setting names."""
    if settings.runtime not in RUNTIMES:
        raise BadRequest(f"unknown runtime {settings.runtime!r}: use {' or '.join(RUNTIMES)}")
    return RUNTIMES[settings.runtime](settings, node_dir(settings, node))


def publish_inventory(store: Store, node: str, runtime: Runtime) -> None:
    """The node's containers as it holds them now; the heartbeat and the tasks both
    publish, and a list read before the stored one is dropped (Store.put_containers)."""
    read_at = time.time()
    store.put_containers(node, runtime.containers(), read_at)


def _dead_here(holder: str) -> bool:
    host, _, pid = holder.rpartition(":")
    return host == socket.gethostname() and pid.isdigit() and not procs.alive(int(pid))


def already_up(node: str, holder: str, store: Store) -> str:
    """Why a second worker may not be node ``node``: who holds it, where, since when."""
    host, _, pid = holder.rpartition(":")
    try:
        rec = store.node(node)
    except CorruptRecord:  # the claim says enough
        rec = None
    where = f" at {rec.address}" if rec and rec.address else ""
    seen = f", seen {time.time() - rec.last_seen:.0f} s ago" if rec and rec.last_seen else ""
    return f"node {node} is already up{where} (pid {pid} on {host}{seen}): one worker per node name"


def _net(s: Settings) -> tuple[str, tuple[str, ...]]:
    """This node's bridge and its addresses (tasks.core.netaddr.NodeNet); ("", ()): none."""
    if not s.bridge:
        return "", ()
    found = bridge(s.bridge)  # not a bridge here: the node stops now, saying so
    return found.name, found.addresses


def _env(s: Settings) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        FERRY_STATE_DIR=str(s.state_dir),
        FERRY_BROKER_URL=s.broker_url,
        FERRY_RESULT_BACKEND=s.result_backend,
        FERRY_REDIS_URL=s.redis_url,
        FERRY_SECRET=s.secret,
        FERRY_RUNTIME=s.runtime,
        FERRY_PODMAN_STORE=s.podman_store,
        FERRY_RUNC_ROOT=s.runc_root,
        FERRY_SHARED_DIR=str(s.container_root),
        FERRY_FAILPOINTS=s.failpoints,
        FERRY_SYNC_ROOTS=s.sync_roots,
        FERRY_SYNC_PORTS=s.sync_ports,
    )
    return env


def serve(settings: Settings, node: str) -> int:
    """Run node ``node`` until SIGTERM or SIGINT."""
    check_node_name(node)
    s = resolve(settings)
    _ = s.sync_root_paths, s.sync_port_range  # a bad setting stops the node now, not mid-migration
    ctypes.CDLL(None).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    home = node_dir(s, node)
    procs.private_dir(home)
    store = Store(connect(s))
    owner = f"{socket.gethostname()}:{os.getpid()}"
    claim_ttl = max(s.node_ttl_s, 3 * s.heartbeat_s)
    holder = store.claim_node(node, owner, claim_ttl)
    if holder is not None and _dead_here(holder):  # a worker of this host killed a moment ago
        holder = store.claim_node(node, owner, claim_ttl, take_from=holder)
    if holder is not None:
        raise BadRequest(already_up(node, holder, store))
    runtime = make_runtime(s, node)
    caps = runtime.capabilities()
    server = TransferServer(
        home / "incoming",
        s.secret.encode(),
        node,
        s.listen_host,
        s.listen_port,
        limits=GateLimits(deadline_s=s.token_deadline_s, per_peer=s.listen_per_peer),
        page_server=runtime.page_server if caps.page_server else None,
        lazy_root=home / "images",
        failpoints=Path(s.failpoints) if s.failpoints else None,
    )
    server.start()
    host, port = server.address
    address = f"{s.advertise_host or host}:{port}"
    bridge_name, bridge_addresses = _net(s)
    record = NodeRecord(
        node,
        address=address,
        runtime=runtime.name,
        host=socket.gethostname(),
        pid=os.getpid(),
        started=time.time(),
        queues=(node_queue(node), node_queue(node, True)),
        probe=caps.record(),
        bridge=bridge_name,
        bridge_addresses=bridge_addresses,
    )
    started: dict[str, float] = {}
    children: dict[str, subprocess.Popen[bytes]] = {}
    stopping = False
    pruned_at = 0.0

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(
        f"ferry: node {node} up: data plane on {address}, queues {', '.join(record.queues)}",
        file=sys.stderr,
        flush=True,
    )
    if runtime.name == "criu" and os.geteuid() != 0:
        print(f"ferry: warning: {NOT_ROOT}", file=sys.stderr, flush=True)
    try:
        while not stopping:
            for role in ROLES:
                child = children.get(role)
                if child is None or child.poll() is not None:
                    if child is not None:
                        log.warning(
                            "%s worker of %s exited (%s); restarting", role, node, child.returncode
                        )
                    children[role] = subprocess.Popen(
                        [sys.executable, "-m", "tasks.node.worker", node, role, address],
                        env=_env(s),
                    )
                    started[role] = time.time()
            _reap({c.pid for c in children.values()})
            load = os.getloadavg()[0]
            try:
                holder = store.claim_node(node, owner, claim_ttl)
                if holder is not None:  # ours lapsed (Redis was away) and another took it
                    log.error("%s; this worker stops", already_up(node, holder, store))
                    stopping = True
                    continue
                store.put_node(
                    replace(
                        record,
                        last_seen=time.time(),
                        load=load,
                        state="up",
                        dataplane_refused=server.refusals(),
                        workers=dict(started),
                    )
                )
                publish_inventory(store, node, runtime)
                collect(home, lambda mid: _state(store, mid))
                if time.time() - pruned_at > PRUNE_EVERY_S:
                    prune_logs(home, store.indexed)
                    pruned_at = time.time()
            except (redis.RedisError, FerryError, OSError) as exc:
                # The broker is away, or /proc or the disk hiccuped: keep the
                # workers (and any freeze-window step they run) alive; the
                # next beat tries again.
                log.warning("heartbeat of %s failed: %s", node, exc)
            time.sleep(s.heartbeat_s if not stopping else 0)
    finally:
        for child in children.values():
            child.terminate()
        with contextlib.suppress(redis.RedisError):
            store.release_node(node, owner)
        for child in children.values():
            try:
                child.wait(10)
            except subprocess.TimeoutExpired:
                child.kill()
        server.stop()
        with contextlib.suppress(redis.RedisError):  # the heartbeat going stale says the same
            store.put_node(replace(record, last_seen=time.time(), state="stopped"))
    return 0


def _state(store: Store, mid: str) -> State | None:
    """Migration ``mid``'s state; None if its record is gone."""
    try:
        return store.get(mid).state
    except BadRequest:
        return None


def _reap(keep: set[int]) -> None:
    """Reap orphaned containers that died under us; leave our own children alone."""
    me = Path(f"/proc/{os.getpid()}/task/{os.getpid()}/children")
    try:
        pids = [int(p) for p in me.read_text().split()]
    except OSError:
        return
    for pid in pids:
        if pid in keep:
            continue
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)


def celery_main(node: str, role: str, address: str) -> None:
    """One of a node's Celery workers (a child of ``serve``)."""
    s = resolve(Settings.from_env())
    urgent = role == "urgent"
    app = make_app(s)
    store = Store(connect(s, patient=True))
    runtime = make_runtime(s, node)
    ctx = NodeContext(
        node=node,
        runtime=runtime,
        node_dir=node_dir(s, node),
        address=address,
        secret=s.secret.encode(),
        failpoints=Path(s.failpoints) if s.failpoints else None,
        container_root=s.container_root,
        sync_roots=s.sync_root_paths,
        sync_ports=s.sync_port_range,
        uplink=Uplink(node_dir(s, node) / "uplink", s.uplink_bps, urgent)
        if s.uplink_bps > 0
        else None,
    )
    register(app, store, ctx, urgent, lambda: publish_inventory(store, node, runtime))
    app.worker_main(
        worker_argv(
            s, node_queue(node, urgent), f"{role}.{node}@%h", 1 if urgent else s.main_concurrency
        )
    )


def die_with_parent() -> None:
    """A node's Celery worker ends with its supervisor: one killed with -9 must not
    leave workers serving the node with a data plane that is gone."""
    parent = os.getppid()
    ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:  # it died before the signal was asked for
        sys.exit(1)


if __name__ == "__main__":
    die_with_parent()
    logging.basicConfig(level=os.environ.get("FERRY_LOG_LEVEL", "WARNING").upper())
    celery_main(sys.argv[1], sys.argv[2], sys.argv[3])
