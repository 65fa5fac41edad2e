"""The outbox gauges of ``/metrics``, read from the background channel snapshot.

A scrape reads the latest snapshot (``api/snapshot.py``) and runs no query, however often
Prometheus scrapes; ``dispatcher_snapshot_age_seconds`` says how fresh it is.
"""

from collections.abc import Iterator
from datetime import UTC, datetime

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from dispatcher.api.snapshot import SnapshotRefresher
from dispatcher.telemetry import metrics


class SnapshotCollector(Collector):
    """Gauges of one snapshot."""

    def __init__(self, refresher: SnapshotRefresher) -> None:
        self._refresher = refresher

    def collect(self) -> Iterator[Metric]:
        snap = self._refresher.current
        due = GaugeMetricFamily(
            "dispatcher_delivery_due",
            "Deliveries due now and not in flight.",
            labels=["channel", "severity"],
        )
        oldest = GaugeMetricFamily(
            "dispatcher_delivery_oldest_due_age_seconds",
            "Age of the oldest due delivery (0 when none is due).",
            labels=["channel", "severity"],
        )
        in_flight = GaugeMetricFamily(
            "dispatcher_delivery_in_flight",
            "Deliveries leased to a worker now.",
            labels=["channel"],
        )
        dead = GaugeMetricFamily(
            "dispatcher_dead_letters",
            "Deliveries in the dead state now.",
            labels=["channel"],
        )
        for ch in snap.channels:
            in_flight.add_metric([ch.channel], ch.in_flight)
            dead.add_metric([ch.channel], ch.dead_letters)
            for sev in ch.due_by_severity:
                due.add_metric([ch.channel, sev.severity], sev.due)
                oldest.add_metric(
                    [ch.channel, sev.severity], sev.oldest_due_age_seconds or 0.0
                )
        yield from (due, oldest, in_flight, dead)
        age = GaugeMetricFamily(
            "dispatcher_snapshot_age_seconds",
            "Seconds since the outbox snapshot behind these gauges was taken.",
        )
        if snap.refreshed_at is not None:
            age.add_metric([], (datetime.now(UTC) - snap.refreshed_at).total_seconds())
        yield age
        ready = self._refresher.ready
        if ready is not None:
            yield GaugeMetricFamily(
                "dispatcher_ready",
                "1 when the last background readiness check passed (as /readyz).",
                value=1.0 if ready else 0.0,
            )


def exposition(refresher: SnapshotRefresher) -> bytes:
    """The whole ``/metrics`` page: the process's metrics and the snapshot's gauges."""
    snapshot = CollectorRegistry(auto_describe=False)
    snapshot.register(SnapshotCollector(refresher))
    return generate_latest(metrics.REGISTRY) + generate_latest(snapshot)
