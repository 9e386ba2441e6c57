"""``ferry metrics``: a Prometheus endpoint for migrations, queues and nodes.

Stateless: every scrape reads ferry's state store (migration records, node
registry) and the broker's queue lengths, so any number of these endpoints
may run, anywhere that reaches Redis, and a restart loses nothing.

    ferry_migrations{state,strategy}                      records in each state
    ferry_migration_downtime_seconds{strategy}            histogram, finished migrations
    ferry_migration_duration_seconds{strategy}            histogram, submit to final state
    ferry_migration_bytes_sent_total{strategy}            data-plane bytes of finished migrations
    ferry_migration_failed_attempts_total{strategy,phase} phase attempts that failed
    ferry_queue_messages{node,queue}                      messages waiting (Redis broker only)
    ferry_node_up{node,arch}                              1 while the node's heartbeat is fresh
    ferry_node_cordoned{node}, ferry_node_containers{node}
    ferry_dataplane_refused_total{node,reason}           connections the listener cut or refused
                                                          (since the node's worker started)
    ferry_coordinator_up                                  1 while the coordinator beats
    ferry_queue_dead_letters_total                        bad messages moved off the queues
                                                          (Redis broker: tasks.messaging.transport)

Counters and histograms add up every record in the store (ferry never
deletes one), so they only grow, as Prometheus expects.
"""

from __future__ import annotations

import re
import signal
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator

import click
import redis
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from tasks.config.broker import broker_client
from tasks.config.settings import Settings
from tasks.control.cluster import Cluster
from tasks.core.migration import Migration, State
from tasks.core.nodes import NodeRecord
from tasks.core.summary import summary
from tasks.messaging.app import node_queue
from tasks.messaging.transport import DEAD_COUNT

DOWNTIME_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
DURATION_BUCKETS = (1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
# Kombu's Redis transport keeps a queue's messages of priority p > 0 in a list
# named "<queue>\x06\x16<p>" beside the queue's own (Celery's default steps).
PRIORITY_SUFFIXES = ("", *(f"\x06\x16{p}" for p in (3, 6, 9)))
FAILED_PHASE = re.compile(r"^([a-z]+) \(attempt \d+\):")
BATCH = 500


class FerryCollector(Collector):
    """Reads ferry's state on every scrape and reports it as Prometheus metrics."""

    def __init__(self, ferry: Cluster, broker: redis.Redis | None) -> None:
        self.ferry = ferry
        self.broker = broker

    def collect(self) -> Iterator[Metric]:
        yield from self._migrations(self._records())
        nodes = self.ferry.nodes()
        yield from self._nodes(nodes)
        if self.broker is not None:
            yield self._queues([n.name for n in nodes])
        dead = CounterMetricFamily(
            "ferry_queue_dead_letters", "Bad messages moved off ferry's queues, aside"
        )
        # kept beside a Redis broker's queues; with RabbitMQ, in the state's Redis
        where = self.ferry.store.r if self.broker is None else self.broker
        dead.add_metric([], float(str(where.get(DEAD_COUNT) or 0)))
        yield dead
        up = GaugeMetricFamily(
            "ferry_coordinator_up", "1 while the coordinator's heartbeat is fresh"
        )
        up.add_metric([], 1.0 if self.ferry.store.coordinator_alive() else 0.0)
        yield up

    def _records(self) -> Iterator[Migration]:
        """Every migration record, fetched in batches (one round trip per batch)."""
        yield from self.ferry.store.all_migrations(BATCH)

    def _migrations(self, records: Iterable[Migration]) -> Iterator[Metric]:
        states: Counter[tuple[str, str]] = Counter()
        downtime: dict[str, list[float]] = defaultdict(list)
        paused: dict[str, list[float]] = defaultdict(list)
        degraded: dict[str, list[float]] = defaultdict(list)
        duration: dict[str, list[float]] = defaultdict(list)
        sent: Counter[str] = Counter()
        failed: Counter[tuple[str, str]] = Counter()
        for m in records:
            states[(m.state.value, m.strategy)] += 1
            for err in m.errors:
                if match := FAILED_PHASE.match(err):
                    failed[(m.strategy, match.group(1))] += 1
            if not m.state.final:
                continue
            s = summary(m)
            duration[m.strategy].append(float(s["total_s"]))
            sent[m.strategy] += int(s["bytes"])
            if m.state is State.DONE and "downtime_ms" in s:
                downtime[m.strategy].append(float(s["downtime_ms"]) / 1000)
                paused[m.strategy].append(float(s["paused_total_ms"]) / 1000)
                if "degraded_ms" in s:
                    degraded[m.strategy].append(float(s["degraded_ms"]) / 1000)
        g = GaugeMetricFamily(
            "ferry_migrations",
            "Migration records by state and strategy",
            labels=["state", "strategy"],
        )
        for (state, strategy), n in sorted(states.items()):
            g.add_metric([state, strategy], n)
        yield g
        yield _histogram(
            "ferry_migration_downtime_seconds",
            "Downtime of finished migrations: the longest pause the container had",
            downtime,
            DOWNTIME_BUCKETS,
        )
        yield _histogram(
            "ferry_migration_paused_total_seconds",
            "Every pause of finished migrations added up (pre-copy passes, the final freeze)",
            paused,
            DOWNTIME_BUCKETS,
        )
        yield _histogram(
            "ferry_migration_degraded_seconds",
            "Post-copy: from the restore until the last page arrived",
            degraded,
            DURATION_BUCKETS,
        )
        yield _histogram(
            "ferry_migration_duration_seconds",
            "Migrations from submission to their final state",
            duration,
            DURATION_BUCKETS,
        )
        c = CounterMetricFamily(
            "ferry_migration_bytes_sent",
            "Data-plane bytes of finished migrations",
            labels=["strategy"],
        )
        for strategy, n in sorted(sent.items()):
            c.add_metric([strategy], n)
        yield c
        f = CounterMetricFamily(
            "ferry_migration_failed_attempts",
            "Phase attempts that failed (each was retried or rolled back)",
            labels=["strategy", "phase"],
        )
        for (strategy, phase), n in sorted(failed.items()):
            f.add_metric([strategy, phase], n)
        yield f

    def _nodes(self, nodes: list[NodeRecord]) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "ferry_node_up", "1 while the node's heartbeat is fresh", labels=["node", "arch"]
        )
        cordoned = GaugeMetricFamily(
            "ferry_node_cordoned", "1 while the node is cordoned", labels=["node"]
        )
        containers = GaugeMetricFamily(
            "ferry_node_containers", "Containers the node reports", labels=["node"]
        )
        refused = CounterMetricFamily(
            "ferry_dataplane_refused",
            "Data-plane connections cut or refused before a valid token, or for lack of a slot",
            labels=["node", "reason"],
        )
        for n in nodes:
            up.add_metric([n.name, str(n.probe.get("arch", ""))], 1.0 if n.alive else 0.0)
            cordoned.add_metric([n.name], 1.0 if n.cordoned else 0.0)
            containers.add_metric([n.name], len(n.containers))
            for reason, count in sorted(n.dataplane_refused.items()):
                refused.add_metric([n.name, reason], float(count))
        yield from (up, cordoned, containers, refused)

    def _queues(self, nodes: list[str]) -> Metric:
        assert self.broker is not None
        g = GaugeMetricFamily(
            "ferry_queue_messages", "Messages waiting in a node's queue", labels=["node", "queue"]
        )
        with self.broker.pipeline(transaction=False) as pipe:
            for node in nodes:
                for urgent in (False, True):
                    for suffix in PRIORITY_SUFFIXES:
                        pipe.llen(node_queue(node, urgent) + suffix)
            lengths = iter(pipe.execute())
        for node in nodes:
            for urgent in (False, True):
                g.add_metric(
                    [node, node_queue(node, urgent)], sum(next(lengths) for _ in PRIORITY_SUFFIXES)
                )
        return g


def _histogram(
    name: str, doc: str, values: dict[str, list[float]], buckets: tuple[float, ...]
) -> Metric:
    h = HistogramMetricFamily(name, doc, labels=["strategy"])
    for strategy, vs in sorted(values.items()):
        cumulative = [(_le(b), float(sum(1 for v in vs if v <= b))) for b in buckets]
        h.add_metric([strategy], [*cumulative, ("+Inf", float(len(vs)))], sum_value=sum(vs))
    return h


def _le(bound: float) -> str:
    """A bucket bound as Prometheus writes it (1 -> "1.0")."""
    return str(floatToGoString(bound))  # type: ignore[no-untyped-call]


def registry_for(settings: Settings) -> CollectorRegistry:
    """A registry holding ferry's collector for ``settings``."""
    ferry = Cluster(settings)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FerryCollector(ferry, broker_client(ferry.settings.broker_url)))
    return registry


def serve(settings: Settings, port: int, address: str) -> None:
    """Serve /metrics on ``address``:``port`` until SIGTERM or SIGINT."""
    stop = {signal.SIGTERM, signal.SIGINT}
    # Blocked before the server thread starts, so only sigwait below receives them.
    signal.pthread_sigmask(signal.SIG_BLOCK, stop)
    server, thread = start_http_server(port, address, registry=registry_for(settings))
    print(f"ferry: metrics on http://{address}:{server.server_port}/metrics", flush=True)
    try:
        signal.sigwait(stop)
    finally:
        server.shutdown()
        thread.join(5)


@click.command("metrics")
@click.option("--port", default=9808, show_default=True)
@click.option(
    "--address",
    default="127.0.0.1",
    show_default=True,
    help="Listen address; the endpoint has no auth, so keep it on a trusted network.",
)
def command(port: int, address: str) -> None:
    """Serve Prometheus metrics for migrations, queues and nodes."""
    serve(Settings.from_env(), port, address)
