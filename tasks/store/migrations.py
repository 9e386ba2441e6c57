"""ferry's state in Redis: migration records, their event streams, the nodes.

Keys (all under ``ferry:``)::

    ferry:mig:<id>            JSON migration record (tasks.core.migration.Migration)
    ferry:mig:<id>:events     stream of every change (phase, state, numbers)
    ferry:migs                sorted set of migration ids by creation time
    ferry:active              set of migration ids not yet final
    ferry:node:<name>         JSON node record (probe, address, heartbeat)
    ferry:node:<name>:containers  JSON inventory; :usage, what it takes (tasks.core.nodes.Usage);
                                  :containers_at, when it was read
    ferry:nodes               set of node names
    ferry:cordon:<name>       present while the node is cordoned
    ferry:redis-run-id        [run_id, when] the coordinator last saw Redis (restarts)
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import fields, replace
from typing import Any

import redis

from tasks.core.codec import decode, encode
from tasks.core.machine import next_step
from tasks.core.migration import DEFAULT_POLICY, Event, Migration, Policy, Send
from tasks.core.nodes import NodeRecord, usage_of
from tasks.core.options import Options
from tasks.core.retention import Entry, Retention, may_drop, to_drop
from tasks.store.evacuations import Records
from workers.errors import BadRequest, CorruptRecord
from workers.ids import check_migration_id
from workers.records import ContainerInfo

EVENTS_MAX = 10_000
log = logging.getLogger("ferry.store")
COORDINATOR_KEY = "ferry:coordinator"  # the coordinator's heartbeat, expiring
# A node's claim: extended (or released) only by the worker that holds it, taken
# over from a holder known dead; the holder, whoever it is, comes back.
_EXTEND = """
local v = redis.call('GET', KEYS[1])
if v == ARGV[1] then redis.call('EXPIRE', KEYS[1], ARGV[2]) end
if not v or (ARGV[3] ~= '' and v == ARGV[3]) then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2]); v = ARGV[1]
end
return v
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 0
"""
# An inventory read before the one stored is stale: another process of the node
# published a newer one meanwhile (a run or kill task while the heartbeat read).
_PUT_NEWER = """
if tonumber(ARGV[3]) < tonumber(redis.call('GET', KEYS[3]) or '0') then return 0 end
redis.call('MSET', KEYS[1], ARGV[1], KEYS[2], ARGV[2], KEYS[3], ARGV[3]); return 1
"""


def to_json(m: Migration) -> str:
    return json.dumps(encode(m))


def from_json(raw: str, mid: str = "?") -> Migration:
    """The record in ``raw`` (stored as ``mid``); CorruptRecord if it is not one.

    >>> from_json('{"id": "m-0123456789ab", "state": "gone"}', "m-0123456789ab")
    Traceback (most recent call last):
    ...
    workers.errors.CorruptRecord: migration record m-0123456789ab does not parse (Migration.state: 'gone' is not a valid State): skipped
    """
    try:
        data = json.loads(raw)
        return decode(Migration, _upgrade(data) if isinstance(data, dict) else data)
    except (ValueError, CorruptRecord) as exc:
        raise CorruptRecord(f"migration record {mid} does not parse ({exc}): skipped") from exc


def _upgrade(d: dict[str, Any]) -> dict[str, Any]:
    """A record written before Options existed kept its options in ``limits``."""
    if "options" in d or not isinstance(d.get("limits"), dict):
        return d
    opts = {f.name for f in fields(Options)}
    limits = {k: v for k, v in d["limits"].items() if k not in opts}
    return {**d, "limits": limits, "options": {k: v for k, v in d["limits"].items() if k in opts}}


class Store:
    """Migration records and node registry on one Redis connection."""

    def __init__(self, client: redis.Redis) -> None:
        # redis-py types every reply as "Awaitable | Any" (one stub for sync and
        # async clients); this client is synchronous.
        self.r: Any = client

    # -- migrations ----------------------------------------------------------
    def create(self, m: Migration) -> None:
        key = f"ferry:mig:{m.id}"
        if not self.r.set(key, to_json(m), nx=True):
            raise BadRequest(f"migration {m.id} exists already")
        self.r.zadd("ferry:migs", {m.id: m.created})
        self.r.sadd("ferry:active", m.id)
        self._event(m, "created")

    def get(self, mid: str) -> Migration:
        raw = self.r.get(f"ferry:mig:{check_migration_id(mid)}")
        if raw is None:
            raise BadRequest(f"no migration {mid}: see `ferry status`")
        return from_json(str(raw), mid)

    def active(self) -> list[str]:
        """Ids of the migrations not yet final (what a restarted coordinator drives on)."""
        return sorted(str(i) for i in self.r.smembers("ferry:active"))

    def ids(self, limit: int = 50) -> list[str]:
        return [str(i) for i in self.r.zrevrange("ferry:migs", 0, limit - 1)]

    def apply(
        self, mid: str, ev: Event, policy: Policy = DEFAULT_POLICY
    ) -> tuple[Migration, list[Send], bool]:
        """Apply ``ev`` to the record atomically; returns (record, sends, changed)."""
        return self._transact(mid, lambda m: next_step(m, ev, policy), ev.kind)

    def update(self, mid: str, change: Callable[[Migration], Migration], what: str) -> Migration:
        """Change the record atomically outside the state machine (progress numbers)."""
        m, _, _ = self._transact(mid, lambda m: (change(m), []), what)
        return m

    def _transact(
        self, mid: str, step: Callable[[Migration], tuple[Migration, list[Send]]], what: str
    ) -> tuple[Migration, list[Send], bool]:
        key = f"ferry:mig:{check_migration_id(mid)}"
        with self.r.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key)
                    raw = pipe.get(key)
                    if raw is None:
                        raise BadRequest(f"no migration {mid}")
                    old = from_json(str(raw), mid)
                    new, sends = step(old)
                    changed = replace(new, updated=old.updated) != old
                    pipe.multi()
                    if changed:
                        pipe.set(key, to_json(new))
                        self._event(new, what, pipe)
                        if new.state.final:
                            pipe.srem("ferry:active", mid)
                    pipe.execute()
                    return new, sends, changed
                except redis.WatchError:
                    continue

    def _event(self, m: Migration, what: str, pipe: Any = None) -> None:
        fields = {
            "what": what,
            "state": m.state.value,
            "phase": m.phase.value if m.phase else "",
            "attempt": m.attempt,
            "t": m.updated,
            "progress": json.dumps(m.results.get("progress", {})),
            "error": m.errors[-1] if m.errors else "",
        }
        (pipe or self.r).xadd(
            f"ferry:mig:{m.id}:events", fields, maxlen=EVENTS_MAX, approximate=True
        )

    def events(
        self, mid: str, after: str = "0", block_ms: int | None = None
    ) -> list[tuple[str, dict[str, str]]]:
        key = f"ferry:mig:{check_migration_id(mid)}:events"
        if block_ms is None:
            return [
                (str(i), dict(f))
                for i, f in self.r.xrange(key, min=f"({after}" if after != "0" else "-")
            ]
        got = self.r.xread({key: after}, block=block_ms)
        return [(str(i), dict(f)) for _, entries in got for i, f in entries]

    def delivery(self, mid: str, phase: str, attempt: int) -> int:
        """Count deliveries of one (migration, phase, attempt): redeliveries are capped."""
        key = f"ferry:deliv:{mid}:{phase}:{attempt}"
        n = int(self.r.incr(key))
        self.r.expire(key, 7 * 86400)
        return n

    def restarted(self, now: float) -> float | None:
        """If Redis restarted since the last call (anyone's; its run_id changed), the
        time of that call: the restart came after it. None otherwise, on the first
        call, or when the ACL refuses INFO (docs/security.md grants it).
        """
        try:
            run_id = str(self.r.info("server")["run_id"])
        except redis.ResponseError:  # NOPERM: INFO not granted
            return None
        last = self.r.getset("ferry:redis-run-id", json.dumps([run_id, now]))
        try:
            old, seen = json.loads(str(last))
        except (TypeError, ValueError):
            return None
        return float(seen) if old != run_id else None

    # -- nodes ---------------------------------------------------------------
    @property
    def evacuations(self) -> Records:
        """The evacuation records, locks and cancel flags, on the same Redis."""
        return Records(self.r)

    def note_link(self, src: str, dst: str, bps: float, now: float) -> None:
        """What the link from ``src`` to ``dst`` just carried, bytes per second."""
        self.r.hset(f"ferry:link:{src}:{dst}", mapping={"bps": bps, "at": now})

    def link(self, src: str, dst: str) -> tuple[float, float] | None:
        """The last measured rate from ``src`` to ``dst`` and when, if ever measured."""
        got = self.r.hgetall(f"ferry:link:{src}:{dst}")
        return (float(got["bps"]), float(got["at"])) if got else None

    def links(self) -> dict[tuple[str, str], tuple[float, float]]:
        """Every measured link: its rate and when, by (src, dst)."""
        keys = [str(k) for k in self.r.scan_iter(match="ferry:link:*", count=1000)]
        pipe = self.r.pipeline(transaction=False)
        for k in keys:
            pipe.hgetall(k)
        out = {}
        for k, got in zip(keys, pipe.execute(), strict=True):
            _, _, src, dst = k.split(":", 3)
            if got:
                out[(src, dst)] = (float(got["bps"]), float(got["at"]))
        return out

    def note_dump_rate(self, node: str, bps: float, now: float) -> None:
        """How fast ``node`` just dumped a whole tree into its images, bytes per second."""
        self.r.hset(f"ferry:dumprate:{node}", mapping={"bps": bps, "at": now})

    def dump_rate(self, node: str) -> tuple[float, float] | None:
        got = self.r.hgetall(f"ferry:dumprate:{node}")
        return (float(got["bps"]), float(got["at"])) if got else None

    def beat_coordinator(self, now: float, ttl_s: float) -> None:
        """The coordinator is alive for ``ttl_s`` more seconds."""
        self.r.set(COORDINATOR_KEY, str(now), ex=max(10, int(ttl_s)))

    def coordinator_alive(self) -> bool:
        return bool(self.r.exists(COORDINATOR_KEY))

    def claim_node(
        self, name: str, owner: str, ttl_s: float, take_from: str | None = None
    ) -> str | None:
        """Hold node ``name`` for ``owner`` (one worker process) for ``ttl_s`` more
        seconds; None when it is ours, else the owner that holds it. ``take_from``:
        an owner known to be dead, whose claim this one replaces."""
        key = f"ferry:claim:{name}"
        ttl = max(1, int(ttl_s + 0.999))
        if self.r.set(key, owner, nx=True, ex=ttl):
            return None
        holder = self.r.eval(_EXTEND, 1, key, owner, ttl, take_from or "")
        return None if holder == owner else str(holder)

    def release_node(self, name: str, owner: str) -> None:
        self.r.eval(_RELEASE, 1, f"ferry:claim:{name}", owner)

    def first_use(self, node: str, mac: str, ttl_s: float) -> bool:
        """Whether signed command ``mac`` runs on ``node`` for the first time (kept
        ``ttl_s``, longer than a command stays fresh): a replay is refused."""
        return bool(self.r.set(f"ferry:used:{node}:{mac}", "1", nx=True, ex=max(1, int(ttl_s))))

    def put_node(self, record: NodeRecord) -> None:
        """Publish node ``record`` (its containers and cordon are kept apart)."""
        data = encode(record)
        for own in ("containers", "cordoned", "alive", "usage"):
            del data[own]
        with self.r.pipeline() as pipe:
            pipe.set(f"ferry:node:{record.name}", json.dumps(data))
            pipe.sadd("ferry:nodes", record.name)
            pipe.execute()

    def put_containers(
        self, name: str, containers: Sequence[ContainerInfo], read_at: float | None = None
    ) -> bool:
        """Publish node ``name``'s inventory, read at ``read_at`` (epoch s; now if None),
        unless one read later is stored already; whether it was."""
        keys = [f"ferry:node:{name}:{k}" for k in ("containers", "usage", "containers_at")]
        at = f"{time.time() if read_at is None else read_at:.6f}"
        listed = json.dumps(encode(list(containers)))
        usage = json.dumps(encode(usage_of(containers)))
        return bool(self.r.eval(_PUT_NEWER, 3, *keys, listed, usage, at))

    def node(self, name: str) -> NodeRecord | None:
        """Node ``name``'s record; None if unknown; CorruptRecord if unreadable."""
        return _node(name, self.r.mget(*_node_keys(name)))

    def nodes(self, inventories: Collection[str] | None = None) -> list[NodeRecord]:
        """Every registered node; a corrupt record is logged and skipped.

        ``inventories``: the nodes whose containers to read (None: all); the others
        carry only their ``usage``, a few bytes where an inventory may list thousands.
        """
        names = sorted(str(n) for n in self.r.smembers("ferry:nodes"))
        keys = [_node_keys(n, inventories is None or n in inventories) for n in names]
        # one round trip for every node: an evacuation tick reads them all
        replies = self.r.mget(*(k for ks in keys for k in ks)) if names else []
        out = []
        for i, name in enumerate(names):
            try:
                rec = _node(name, replies[3 * i : 3 * i + 3], keys[i][1].endswith(":usage"))
            except CorruptRecord as exc:
                log.error("%s", exc)
                continue
            if rec is not None:
                out.append(rec)
        return out

    def cordon(self, name: str, on: bool) -> None:
        if on:
            self.r.set(f"ferry:cordon:{name}", "1")
        else:
            self.r.delete(f"ferry:cordon:{name}")

    def all_migrations(self, batch: int = 500) -> Iterator[Migration]:
        """Every record, ``batch`` at a time; a corrupt one is logged and skipped."""
        ids = self.ids(limit=max(1, int(self.r.zcard("ferry:migs"))))
        for i in range(0, len(ids), batch):
            chunk = ids[i : i + batch]
            for mid, raw in zip(chunk, self.r.mget([f"ferry:mig:{m}" for m in chunk]), strict=True):
                if raw is None:
                    continue
                try:
                    yield from_json(str(raw), mid)
                except CorruptRecord as exc:
                    log.error("%s", exc)

    def prune(self, policy: Retention, now: float, batch: int = 500) -> list[str]:
        """Drop the records (and event streams) of finished migrations that
        ``policy`` no longer keeps, from the oldest ``batch`` of the index; the
        ids dropped. Reads no record: the index's scores are the creation times
        and ``ferry:active`` says which are in flight."""
        with self.r.pipeline(transaction=False) as pipe:
            total, first = (
                pipe.zcard("ferry:migs").zrange("ferry:migs", 0, 0, withscores=True).execute()
            )
        if not first or not may_drop(int(total), float(first[0][1]), now, policy):
            return []  # most beats: two cheap commands
        rows = self.r.zrange("ferry:migs", 0, batch - 1, withscores=True)
        ids = [str(mid) for mid, _ in rows]
        active = self.r.smismember("ferry:active", ids)
        oldest = [
            Entry(mid, float(created), not busy)
            for mid, (_, created), busy in zip(ids, rows, active, strict=True)
        ]
        drop = to_drop(oldest, int(total), now, policy)
        if drop:
            with self.r.pipeline() as pipe:
                pipe.delete(
                    *(k for mid in drop for k in (f"ferry:mig:{mid}", f"ferry:mig:{mid}:events"))
                )
                pipe.zrem("ferry:migs", *drop)
                pipe.execute()
        return drop

    def indexed(self, mids: Sequence[str]) -> list[bool]:
        """Whether each of ``mids`` is still in the migration index (not pruned)."""
        return [s is not None for s in self.r.zmscore("ferry:migs", list(mids))] if mids else []

    def iter_migrations(self, limit: int = 50) -> Iterator[Migration]:
        """The newest ``limit`` records; a corrupt one is logged and skipped."""
        for mid in self.ids(limit):
            try:
                yield self.get(mid)
            except CorruptRecord as exc:
                log.error("%s", exc)
            except BadRequest:
                continue


def _node_keys(name: str, inventory: bool = True) -> tuple[str, str, str]:
    part = "containers" if inventory else "usage"
    return f"ferry:node:{name}", f"ferry:node:{name}:{part}", f"ferry:cordon:{name}"


def _node(name: str, replies: list[Any], usage: bool = False) -> NodeRecord | None:
    """A node record from its keys' ``replies``; the second its usage, if ``usage``."""
    raw, cont, cordon = replies
    if raw is None:
        return None
    where = f"node record {name}"
    try:
        data = json.loads(str(raw))
        own = json.loads(str(cont)) if cont else ({} if usage else [])
    except ValueError as exc:
        raise CorruptRecord(f"{where}: not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise CorruptRecord(f"{where}: want an object, not {type(data).__name__}")
    data.update({"usage" if usage else "containers": own}, name=name, cordoned=cordon is not None)
    return decode(NodeRecord, data, where)
