"""A node's registry record: what it published, is it alive, what can it do.

A node's worker publishes its :class:`NodeRecord` with every heartbeat
(tasks.store.migrations.Store keeps it, through tasks.core.codec); readers get
it back typed, ``alive`` filled in by tasks.control.cluster from the heartbeat.

>>> rec = NodeRecord("pi1", state="up", last_seen=100.0,
...                  probe={"arch": "aarch64", "criu_ok": True, "page_server": True})
>>> rec.is_alive(now=110.0, ttl_s=30.0), rec.is_alive(now=200.0, ttl_s=30.0)
(True, False)
>>> rec.caps.arch, rec.caps.soft_dirty, rec.caps.page_server
('aarch64', False, True)
>>> from tasks.core.codec import decode, encode
>>> decode(NodeRecord, encode(rec)) == rec
True

A reader that skips a node's inventory (an evacuation tick needs only what its
destinations have room for) fills in its :class:`Usage` instead, which the node
publishes beside the inventory:

>>> c = (ContainerInfo("db", memory_bytes=64, labels={"anti-affinity": "db"}),
...      ContainerInfo("old", memory_bytes=32, state="exited"))
>>> NodeRecord("pi1", containers=c).taken
Usage(memory_bytes=64, containers=1, groups=('db',))
>>> NodeRecord("pi1", usage=Usage(128, 2)).taken.memory_bytes
128
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from tasks.core.chooser import NodeCaps
from workers.records import ContainerInfo, Need


@dataclass(frozen=True)
class Usage:
    """What a node's containers that have not exited take: their memory, their count and
    their anti-affinity groups (what the planner weighs a destination by)."""

    memory_bytes: int = 0
    containers: int = 0
    groups: tuple[str, ...] = ()  # sorted


def usage_of(containers: Iterable[ContainerInfo]) -> Usage:
    """The :class:`Usage` of an inventory."""
    running = [c for c in containers if c.state != "exited"]
    groups = {c.labels.get("anti-affinity", "") for c in running} - {""}
    return Usage(sum(c.memory_bytes for c in running), len(running), tuple(sorted(groups)))


@dataclass(frozen=True)
class NodeRecord:
    """One node as the registry holds it."""

    name: str
    address: str = ""  # its data plane, host:port
    runtime: str = "criu"
    host: str = ""  # the machine its worker runs on
    pid: int = 0  # its worker's supervisor there
    started: float = 0.0
    queues: tuple[str, ...] = ()
    probe: dict[str, Any] = field(default_factory=dict)  # workers.records.Capabilities.record()
    state: str = "stopped"  # up | stopped, as its worker last said
    last_seen: float = 0.0
    load: float = 0.0  # 1-minute load average at the last heartbeat
    dataplane_refused: dict[str, int] = field(default_factory=dict)  # by reason (its gate's)
    workers: dict[str, float] = field(default_factory=dict)  # role -> when (re)started
    containers: tuple[ContainerInfo, ...] = ()
    cordoned: bool = False
    bridge: str = ""  # where its containers' own addresses plug in ("": --net refused here)
    bridge_addresses: tuple[str, ...] = ()  # the bridge's own, "10.77.0.11/24"
    alive: bool = False  # filled in by the reader from the heartbeat and the node TTL
    usage: Usage | None = None  # filled in by a reader that skipped ``containers``

    @property
    def taken(self) -> Usage:
        """What its containers take: from its inventory, else the usage it published."""
        return self.usage if self.usage is not None else usage_of(self.containers)

    def is_alive(self, now: float, ttl_s: float) -> bool:
        """Whether its worker is up and was heard from within ``ttl_s``."""
        return self.state == "up" and now - self.last_seen < ttl_s

    @property
    def caps(self) -> NodeCaps:
        """Its capabilities, as the chooser sees them."""
        p = self.probe
        return NodeCaps(
            name=self.name,
            arch=p.get("arch", "?"),
            runtime=self.runtime,
            criu_ok=bool(p.get("criu_ok")),
            soft_dirty=bool(p.get("soft_dirty")),
            lazy_pages=bool(p.get("lazy_pages")),
            lazy_pages_reason=str(p.get("lazy_pages_reason", "")),
            mem_free_bytes=int(p.get("mem_free_bytes", 1 << 40)),
            disk_free_bytes=int(p.get("disk_free_bytes", 1 << 40)),
            cordoned=self.cordoned,
            criu_reason=str(p.get("criu_reason", "")),
            page_server=bool(p.get("page_server")),
            bits=int(p.get("bits", 0)),  # 0, "" and (): a record from before the kernel probe
            page_size=int(p.get("page_size", 0)),
            tracker=str(p.get("tracker", "")),
            lacks=frozenset(Need(n) for n in p.get("lacks", ()) if n in Need._value2member_map_),
        )

    def container(self, name: str) -> ContainerInfo | None:
        """Its container ``name``, as it last reported it."""
        return next((c for c in self.containers if c.name == name), None)
