"""A replayed delivery in the telemetry: its attempt joins the event's trace with the
replay id, the webhook receiver gets that trace, and the replay metrics move."""

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)
from opentelemetry.trace import SpanKind

from dispatcher.outbox.dead import DeadFilter
from dispatcher.sinks.webhook import WebhookSink
from dispatcher.telemetry.metrics import REGISTRY
from tests.delivery.conftest import trace_of
from tests.delivery.harness import StackFactory, webhook_channel
from tests.delivery.test_replay_scenarios import create, dead_lettered, wait_replay
from tests.waiting import wait_for

pytestmark = [pytest.mark.postgres, pytest.mark.rabbitmq]

N = 3


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_a_replayed_delivery_joins_the_trace_and_moves_the_replay_metrics(
    stack: StackFactory, spans: InMemorySpanExporter, webhook_sink: WebhookSink
) -> None:
    """publish -> dead attempt -> replayed attempt (with the replay id) share one trace,
    the receiver sees it; replays running goes up then down, rows replayed by N."""
    running0 = value("dispatcher_replays_running")
    replayed0 = value("dispatcher_replayed_deliveries_total", channel="webhook")
    channels = {"webhook": webhook_channel(webhook_sink.url, ["east"])}
    async with stack(channels=channels) as s:
        rows = await dead_lettered(s, webhook_sink, ("east",), N)
        # One row a second: the replay runs long enough to be seen running.
        replay_id, total = await create(
            s.engine, DeadFilter(endpoints=("east",)), rate=1
        )
        assert total == N
        await wait_for(
            lambda: value("dispatcher_replays_running") == running0 + 1,
            "the replay to be running",
        )
        await wait_replay(s.engine, replay_id, lambda r: r.status == "done")
        await wait_for(
            lambda: value("dispatcher_replays_running") == running0,
            "the replay to stop running",
        )
    assert (
        value("dispatcher_replayed_deliveries_total", channel="webhook")
        == replayed0 + N
    )

    finished = spans.get_finished_spans()
    publishes = {
        str(s.attributes["messaging.message.id"]): s
        for s in finished
        if s.kind is SpanKind.PRODUCER and s.attributes
    }
    received = {
        r.webhook_id: r for r in webhook_sink.received_on("/east") if r.status == 200
    }
    for row in rows:
        trace_id = trace_of(publishes[str(row.event_id)])
        attempts = sorted(
            (
                s
                for s in finished
                if s.name == "deliver webhook"
                and s.attributes
                and s.attributes["dispatcher.delivery_id"] == str(row.id)
            ),
            key=lambda s: s.start_time or 0,
        )
        assert [trace_of(a) for a in attempts] == [trace_id, trace_id]
        first, replayed = (dict(a.attributes or {}) for a in attempts)
        assert first["dispatcher.outcome"] == "dead"
        assert "dispatcher.replay_id" not in first
        assert replayed["dispatcher.outcome"] == "delivered"
        assert replayed["dispatcher.replay_id"] == str(replay_id)
        request = received[str(row.id)]
        assert int(request.headers["traceparent"].split("-")[1], 16) == trace_id
