"""Every Prometheus metric of the dispatcher, and the small functions the hot paths call.

One registry for the process, served at ``/metrics`` by the API (``dispatcher worker``,
which runs no API: by ``serve``, on ``metrics_port``). Labels are bounded and
come from configuration or closed vocabularies (channel, provider or endpoint name,
severity, outcome, error class, reject reason), never from an event's content.
Counters move once per batch where the code has batches (ingest writes); the delivery
metrics are added up in plain dicts per attempt and moved into prometheus_client in one go
(``_DeliveryTally``) before every collection and every ``FLUSH_AFTER`` provider tries;
gauges of the outbox come from the API's background snapshot, never from a query per scrape.
"""

import threading
import time
from collections import Counter as Tally
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, RestrictedRegistry


class _Registry(CollectorRegistry):
    """The process's registry: a scrape filtered by name (``?name[]=``, which collects in
    no fixed order) moves the delivery tally first, as a whole collection does."""

    def restricted_registry(self, names: Iterable[str]) -> RestrictedRegistry:
        _TALLY.flush()
        return super().restricted_registry(names)


REGISTRY = _Registry()


class AttemptFacts(Protocol):
    """What the metrics read of a provider try (``outbox.outcomes.AttemptRecord``)."""

    @property
    def provider(self) -> str | None: ...
    @property
    def outcome(self) -> str: ...
    @property
    def error_class(self) -> str | None: ...
    @property
    def latency_ms(self) -> float | None: ...


#: Provider tries that may wait in the tally before they are moved without a collection.
FLUSH_AFTER = 256


class _DeliveryTally(Collector):
    """The delivery metrics of the attempts since the last flush, in plain dicts.

    ``flush`` moves them into their prometheus_client metrics: a counter's label set
    moves by ``inc(n)`` once, through a label child looked up once per process; each
    duration is observed (prometheus_client has no batch observe), without the per-call
    ``labels()``. It runs before every collection of the registry (this collector is
    registered first and yields nothing) and whenever ``FLUSH_AFTER`` tries wait, so
    nothing waits unbounded and no reader sees a metric without its latest attempts.
    The lock makes the hot path and a scrape thread (``serve``) safe together.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._attempts: dict[tuple[str, str, str, str], int] = {}
        self._durations: list[tuple[tuple[str, str], float]] = []
        self._deliveries: dict[tuple[str, str, str], int] = {}
        self._latencies: list[tuple[tuple[str, str], float]] = []
        self._tries = 0
        self._children: dict[tuple[object, tuple[str, ...]], Any] = {}

    def add(
        self,
        channel: str,
        severity: str,
        tries: Iterable[AttemptFacts],
        *,
        final: str | None,
        endpoint: str | None,
        age_seconds: float | None,
    ) -> None:
        with self._lock:
            attempts = self._attempts
            for t in tries:
                provider = endpoint or t.provider or "none"
                key = (channel, provider, t.outcome, t.error_class or "none")
                attempts[key] = attempts.get(key, 0) + 1
                if t.latency_ms is not None:
                    self._durations.append(((channel, provider), t.latency_ms / 1000))
                self._tries += 1
            if final is not None:
                ended = (channel, final, severity)
                self._deliveries[ended] = self._deliveries.get(ended, 0) + 1
                if final == "delivered" and age_seconds is not None:
                    self._latencies.append(((channel, severity), max(0.0, age_seconds)))
            full = self._tries >= FLUSH_AFTER
        if full:
            self.flush()

    def flush(self) -> None:
        with self._lock:
            attempts, self._attempts = self._attempts, {}
            durations, self._durations = self._durations, []
            deliveries, self._deliveries = self._deliveries, {}
            latencies, self._latencies = self._latencies, []
            self._tries = 0
            for tried, count in attempts.items():
                self._child(ATTEMPTS, tried).inc(count)
            for timed, seconds in durations:
                self._child(ATTEMPT_DURATION, timed).observe(seconds)
            for ended, count in deliveries.items():
                self._child(DELIVERIES, ended).inc(count)
            for aged, seconds in latencies:
                self._child(DELIVERY_LATENCY, aged).observe(seconds)

    def _child(self, metric: Counter | Histogram, labels: tuple[str, ...]) -> Any:
        key = (metric, labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def describe(self) -> Iterator[Metric]:
        return iter(())

    def collect(self) -> Iterator[Metric]:
        self.flush()
        return iter(())


_TALLY = _DeliveryTally()
REGISTRY.register(_TALLY)


ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)

#: AMQP header with the publish time (epoch seconds) that ``Publisher`` sets.
PUBLISHED_AT_HEADER = "x-published-at"
#: Latencies from milliseconds (a webhook on loopback) to an hour (a long outage).
_LATENCY_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    300.0, 900.0, 3600.0,
)  # fmt: skip
_BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)
#: Breaker state as a number: ordered by how much traffic it lets through.
BREAKER_STATE_VALUE = {"closed": 0, "half_open": 1, "open": 2}

EVENTS_INGESTED = Counter(
    "dispatcher_events_ingested_total",
    "Events stored for the first time (duplicates excluded).",
    registry=REGISTRY,
)
EVENTS_DUPLICATE = Counter(
    "dispatcher_events_duplicate_total",
    "Messages whose event_id was stored already (redeliveries, publisher retries).",
    registry=REGISTRY,
)
MESSAGES_REJECTED = Counter(
    "dispatcher_messages_rejected_total",
    "Messages stored as rejected, by reason (events/rejection.py: RejectReason).",
    ["reason"],
    registry=REGISTRY,
)
INGEST_BATCH_SIZE = Histogram(
    "dispatcher_ingest_batch_size",
    "Messages per ingest transaction.",
    buckets=_BATCH_BUCKETS,
    registry=REGISTRY,
)
PUBLISH_TO_COMMIT = Histogram(
    "dispatcher_ingest_publish_to_commit_seconds",
    "From the publisher's publish (x-published-at header) to the ingest commit.",
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
DELIVERIES = Counter(
    "dispatcher_deliveries_total",
    "Deliveries that reached a final state: delivered or dead (dead-lettered).",
    ["channel", "outcome", "severity"],
    registry=REGISTRY,
)
ATTEMPTS = Counter(
    "dispatcher_delivery_attempts_total",
    "Provider tries, by provider or endpoint, outcome and error class.",
    ["channel", "provider", "outcome", "error_class"],
    registry=REGISTRY,
)
ATTEMPT_DURATION = Histogram(
    "dispatcher_delivery_attempt_duration_seconds",
    "Duration of one provider try.",
    ["channel", "provider"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
DELIVERY_LATENCY = Histogram(
    "dispatcher_delivery_latency_seconds",
    "From the publisher's publish (else the ingest commit) to delivered.",
    ["channel", "severity"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
BREAKER_STATE = Gauge(
    "dispatcher_breaker_state",
    "Circuit breaker state in this process: 0 closed, 1 half-open, 2 open.",
    ["channel", "provider"],
    registry=REGISTRY,
)
BREAKER_TRANSITIONS = Counter(
    "dispatcher_breaker_transitions_total",
    "Circuit breaker state changes, by the state entered.",
    ["channel", "provider", "state"],
    registry=REGISTRY,
)
REPLAYS_RUNNING = Gauge(
    "dispatcher_replays_running",
    "Dead-letter replays under way in this process.",
    registry=REGISTRY,
)
REPLAYED = Counter(
    "dispatcher_replayed_deliveries_total",
    "Dead deliveries put back to pending by a replay.",
    ["channel"],
    registry=REGISTRY,
)
SPANS_DROPPED = Counter(
    "dispatcher_telemetry_spans_dropped_total",
    "Spans not exported: the export queue was full or the collector failed or timed out.",
    registry=REGISTRY,
)


def ingest_batch(
    size: int,
    *,
    stored: int,
    duplicates: int,
    rejected: Iterable[str],
    published_at: Iterable[float],
) -> None:
    """One committed ingest transaction: ``rejected`` reasons, ``published_at`` epochs."""
    INGEST_BATCH_SIZE.observe(size)
    if stored:
        EVENTS_INGESTED.inc(stored)
    if duplicates:
        EVENTS_DUPLICATE.inc(duplicates)
    for reason, count in Tally(rejected).items():
        MESSAGES_REJECTED.labels(reason).inc(count)
    now = time.time()
    for published in published_at:
        PUBLISH_TO_COMMIT.observe(max(0.0, now - published))


def delivery_attempted(
    channel: str,
    severity: str,
    tries: Iterable[AttemptFacts],
    *,
    final: str | None,
    endpoint: str | None = None,
    age_seconds: float | None = None,
) -> None:
    """One attempt at one delivery: its provider tries and, if it ended, its final state.

    Counted in ``_TALLY`` (no prometheus_client call here); every collection sees it.

    Args:
        endpoint: the webhook endpoint, which labels the tries instead of the adapter name.
        final: "delivered" or "dead" when the delivery ended, else None.
        age_seconds: since publish (or commit), observed when delivered.
    """
    _TALLY.add(
        channel,
        severity,
        tries,
        final=final,
        endpoint=endpoint,
        age_seconds=age_seconds,
    )


def breaker_changed(channel: str, provider: str, state: str) -> None:
    BREAKER_STATE.labels(channel, provider).set(BREAKER_STATE_VALUE.get(state, 0))
    BREAKER_TRANSITIONS.labels(channel, provider, state).inc()


def replay_started() -> None:
    REPLAYS_RUNNING.inc()


def replayed(by_channel: dict[str, int]) -> None:
    """A replay put these dead deliveries back to pending, per channel."""
    for channel, count in by_channel.items():
        REPLAYED.labels(channel).inc(count)


def replay_finished() -> None:
    """A replay this process ran stopped running here: done, cancelled, taken over,
    or the process is stopping."""
    REPLAYS_RUNNING.dec()


def serve(host: str, port: int) -> Callable[[], None]:
    """Serve this process's metrics at ``http://host:port/metrics`` from a thread of
    prometheus_client's own server (for a process without the API); returns its stop."""
    server, thread = start_http_server(port, addr=host, registry=REGISTRY)

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(5)

    return stop


def spans_dropped(count: int) -> None:
    SPANS_DROPPED.inc(count)


class _Probes(Collector):
    """Gauges read at scrape time from in-process state: no I/O, no query."""

    def __init__(self) -> None:
        self.consumers: dict[str, Callable[[], bool]] = {}
        #: SQLAlchemy pools; a queue pool counts ``checkedout()``, others count 0.
        self.pools: dict[str, object] = {}

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "dispatcher_ingest_consumer_up",
            "1 while the ingest consumer is registered on an open channel.",
            labels=["queue"],
        )
        for queue, consuming in list(self.consumers.items()):
            up.add_metric([queue], 1.0 if consuming() else 0.0)
        pool = GaugeMetricFamily(
            "dispatcher_db_pool_connections_in_use",
            "Database connections checked out of the pool.",
            labels=["pool"],
        )
        for name, watched in list(self.pools.items()):
            checkedout = getattr(watched, "checkedout", None)
            pool.add_metric([name], float(checkedout()) if checkedout else 0.0)
        yield up
        yield pool


_PROBES = _Probes()
REGISTRY.register(_PROBES)


def watch_consumer(queue: str, consuming: Callable[[], bool]) -> None:
    """Report ``dispatcher_ingest_consumer_up{queue}`` from ``consuming()`` at each scrape."""
    _PROBES.consumers[queue] = consuming


def watch_pool(name: str, pool: object) -> None:
    """Report ``dispatcher_db_pool_connections_in_use{pool}`` of a SQLAlchemy pool."""
    _PROBES.pools[name] = pool
