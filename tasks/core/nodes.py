"""A node's registry record as the pure core reads it: is it alive, what can it do.

Records are what tasks.store.migrations.Store.nodes returns: the node's
heartbeat state and time, its probe, its runtime, its cordon flag.

>>> rec = {"name": "pi1", "state": "up", "last_seen": 100.0, "runtime": "criu",
...        "probe": {"arch": "aarch64", "criu_ok": True, "page_server": True}}
>>> alive(rec, now=110.0, ttl_s=30.0), alive(rec, now=200.0, ttl_s=30.0)
(True, False)
>>> caps(rec).arch, caps(rec).soft_dirty, caps(rec).page_server
('aarch64', False, True)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tasks.core.chooser import NodeCaps
from workers.records import Need


def alive(rec: Mapping[str, Any], now: float, ttl_s: float) -> bool:
    """Whether a node's worker is up and was heard from within ``ttl_s``."""
    return bool(rec.get("state") == "up" and now - float(rec.get("last_seen", 0)) < ttl_s)


def caps(rec: Mapping[str, Any]) -> NodeCaps:
    """A node's capabilities, as the chooser sees them, from its registry record."""
    p = rec.get("probe", {})  # workers.records.Capabilities.record(), as its runtime probed it
    return NodeCaps(
        name=rec["name"],
        arch=p.get("arch", "?"),
        runtime=rec.get("runtime", "criu"),
        criu_ok=bool(p.get("criu_ok")),
        soft_dirty=bool(p.get("soft_dirty")),
        lazy_pages=bool(p.get("lazy_pages")),
        lazy_pages_reason=str(p.get("lazy_pages_reason", "")),
        mem_free_bytes=int(p.get("mem_free_bytes", 1 << 40)),
        disk_free_bytes=int(p.get("disk_free_bytes", 1 << 40)),
        cordoned=bool(rec.get("cordoned")),
        criu_reason=str(p.get("criu_reason", "")),
        page_server=bool(p.get("page_server")),
        bits=int(p.get("bits", 0)),  # 0, "" and (): a record from before the kernel probe
        page_size=int(p.get("page_size", 0)),
        tracker=str(p.get("tracker", "")),
        lacks=frozenset(Need(n) for n in p.get("lacks", ()) if n in Need._value2member_map_),
    )
