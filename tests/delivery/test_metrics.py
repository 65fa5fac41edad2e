"""Every metric moves as the scenario that exercises it says, and ``/metrics`` serves them.

A whole replica against real RabbitMQ, PostgreSQL and a local webhook receiver: one
endpoint answers, one fails once, one refuses (404: dead), one is down (its breaker opens);
a message that is not JSON is rejected. Counters are process-wide, so each assertion
compares a value before and after.
"""

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from dispatcher import topology
from dispatcher.api.app import create_app
from dispatcher.api.server import ApiServer
from dispatcher.publisher import Publisher
from dispatcher.settings import Settings
from dispatcher.sinks.webhook import WebhookSink
from dispatcher.telemetry.metrics import REGISTRY
from tests.delivery.harness import StackFactory, event_to, webhook_channel
from tests.waiting import wait_for

pytestmark = [pytest.mark.postgres, pytest.mark.rabbitmq]

ENDPOINTS = ["monitor", "flaky", "gone", "down"]


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(client: httpx.AsyncClient) -> Samples:
    response = await client.get("/metrics")  # no token: open
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def gauge(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


async def check_snapshot_gauges(settings: Settings, queue: str) -> None:
    """Scrape the API until the snapshot shows the scenario's backlog and dead letter."""
    server = ApiServer(create_app(settings), settings.api)
    await server.start()
    try:
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{server.port}"
        ) as client:
            got: Samples = {}

            async def moved() -> bool:
                nonlocal got
                got = await scrape(client)
                return bool(
                    gauge(
                        got,
                        "dispatcher_delivery_due",
                        channel="webhook",
                        severity="low",
                    )
                    and gauge(got, "dispatcher_dead_letters", channel="webhook") == 1
                    and gauge(got, "dispatcher_ready") == 1
                )

            await wait_for(moved, "the snapshot gauges to show the backlog", timeout=30)
    finally:
        await server.stop()
    age = gauge(
        got,
        "dispatcher_delivery_oldest_due_age_seconds",
        channel="webhook",
        severity="low",
    )
    assert age is not None
    assert age > 0
    assert gauge(got, "dispatcher_delivery_in_flight", channel="webhook") == 0
    assert (gauge(got, "dispatcher_snapshot_age_seconds") or 99) < 10
    assert gauge(got, "dispatcher_db_pool_connections_in_use", pool="api") is not None
    assert gauge(got, "dispatcher_ingest_consumer_up", queue=queue) == 1
    assert gauge(got, "dispatcher_events_ingested_total") == value(
        "dispatcher_events_ingested_total"
    )


async def test_a_scenario_moves_every_metric_and_metrics_serves_them(
    stack: StackFactory, webhook_sink: WebhookSink
) -> None:
    """Ingested, rejected, batch sizes, publish-to-commit, deliveries by outcome and
    severity, attempts by endpoint and error class, latencies, breaker state and
    transitions, consumer up, pool in use; and the snapshot gauges on ``/metrics``."""
    webhook_sink.respond("/flaky", 503, times=1)
    webhook_sink.respond("/gone", 404)
    webhook_sink.respond("/down", 503)
    breaker = {"failure_threshold": 2, "failure_rate": 1.0, "min_calls": 100}
    channels = {
        "webhook": webhook_channel(
            webhook_sink.url, ENDPOINTS, breaker={**breaker, "open_seconds": 60.0}
        )
    }
    before = {
        "ingested": value("dispatcher_events_ingested_total"),
        "not_json": value("dispatcher_messages_rejected_total", reason="not_json"),
        "batches": value("dispatcher_ingest_batch_size_count"),
        "batched": value("dispatcher_ingest_batch_size_sum"),
        "p2c": value("dispatcher_ingest_publish_to_commit_seconds_count"),
        "delivered": value(
            "dispatcher_deliveries_total",
            channel="webhook",
            outcome="delivered",
            severity="critical",
        ),
        "delivered_high": value(
            "dispatcher_deliveries_total",
            channel="webhook",
            outcome="delivered",
            severity="high",
        ),
        "dead": value(
            "dispatcher_deliveries_total",
            channel="webhook",
            outcome="dead",
            severity="critical",
        ),
        "flaky_failed": value(
            "dispatcher_delivery_attempts_total",
            channel="webhook",
            provider="flaky",
            outcome="failed",
            error_class="provider_transient",
        ),
        "gone_failed": value(
            "dispatcher_delivery_attempts_total",
            channel="webhook",
            provider="gone",
            outcome="failed",
            error_class="provider_permanent",
        ),
        "flaky_time": value(
            "dispatcher_delivery_attempt_duration_seconds_count",
            channel="webhook",
            provider="flaky",
        ),
        "latency": value(
            "dispatcher_delivery_latency_seconds_count",
            channel="webhook",
            severity="critical",
        ),
        "opened": value(
            "dispatcher_breaker_transitions_total",
            channel="webhook",
            provider="down",
            state="open",
        ),
    }
    api = {"port": 0, "limits": {"snapshot_interval": 0.2}}
    async with stack(channels=channels, api=api) as s:
        queue = topology.ingest_queue(s.settings.queue_prefix)
        assert value("dispatcher_ingest_consumer_up", queue=queue) == 1.0
        ids = await s.publish(
            event_to(("webhook", "monitor"), severity="critical"),
            event_to(("webhook", "flaky"), severity="high"),
            event_to(("webhook", "gone"), severity="critical"),
            *(event_to(("webhook", "down"), severity="low") for _ in range(3)),
        )
        async with Publisher(
            s.settings.amqp_url.get_secret_value(), s.settings.exchange
        ) as publisher:
            await publisher.publish(b"{not json", "crisis.detected")
        await s.wait_deliveries(
            lambda rows: sum(r.status in {"delivered", "dead"} for r in rows) == 3,
            event_ids=ids[:3],
            what="monitor and flaky delivered, gone dead",
        )
        await wait_for(
            lambda: (
                value(
                    "dispatcher_breaker_transitions_total",
                    channel="webhook",
                    provider="down",
                    state="open",
                )
                > before["opened"]
            ),
            "the breaker of the endpoint that is down to open",
        )
        assert value(
            "dispatcher_breaker_state", channel="webhook", provider="down"
        ) in {
            1.0,
            2.0,
        }
        assert value("dispatcher_db_pool_connections_in_use", pool="dispatcher") >= 0

        await check_snapshot_gauges(s.settings, queue)
    assert value("dispatcher_ingest_consumer_up", queue=queue) == 0.0

    assert value("dispatcher_events_ingested_total") - before["ingested"] == 6
    assert (
        value("dispatcher_messages_rejected_total", reason="not_json")
        - before["not_json"]
        == 1
    )
    assert value("dispatcher_ingest_batch_size_count") > before["batches"]
    assert value("dispatcher_ingest_batch_size_sum") - before["batched"] == 7
    assert (
        value("dispatcher_ingest_publish_to_commit_seconds_count") - before["p2c"] == 7
    )
    moved = {
        "delivered": (
            "dispatcher_deliveries_total",
            {"channel": "webhook", "outcome": "delivered", "severity": "critical"},
        ),
        "delivered_high": (
            "dispatcher_deliveries_total",
            {"channel": "webhook", "outcome": "delivered", "severity": "high"},
        ),
        "dead": (
            "dispatcher_deliveries_total",
            {"channel": "webhook", "outcome": "dead", "severity": "critical"},
        ),
        "flaky_failed": (
            "dispatcher_delivery_attempts_total",
            {
                "channel": "webhook",
                "provider": "flaky",
                "outcome": "failed",
                "error_class": "provider_transient",
            },
        ),
        "gone_failed": (
            "dispatcher_delivery_attempts_total",
            {
                "channel": "webhook",
                "provider": "gone",
                "outcome": "failed",
                "error_class": "provider_permanent",
            },
        ),
        "latency": (
            "dispatcher_delivery_latency_seconds_count",
            {"channel": "webhook", "severity": "critical"},
        ),
    }
    for key, (name, labels) in moved.items():
        assert value(name, **labels) - before[key] == 1, key
    # Two tries for the endpoint that failed once: one failed, one delivered.
    assert (
        value(
            "dispatcher_delivery_attempt_duration_seconds_count",
            channel="webhook",
            provider="flaky",
        )
        - before["flaky_time"]
        == 2
    )
