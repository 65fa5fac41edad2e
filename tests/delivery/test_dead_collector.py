"""A collector that accepts connections and never answers costs no delivery."""

import asyncio
import os
from collections.abc import AsyncIterator

import pytest

from dispatcher.sinks.webhook import WebhookSink
from dispatcher.telemetry import tracing
from dispatcher.telemetry.metrics import REGISTRY
from dispatcher.telemetry.setup import configure_tracing, shutdown_tracing
from tests.delivery.harness import StackFactory, event_to, webhook_channel
from tests.waiting import wait_for

pytestmark = [pytest.mark.postgres, pytest.mark.rabbitmq]


@pytest.fixture
async def black_hole() -> AsyncIterator[int]:
    """A TCP server that accepts, reads and never writes a byte."""
    held: list[asyncio.StreamWriter] = []

    async def swallow(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        held.append(writer)
        while await reader.read(65536):
            pass

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    for writer in held:
        writer.close()
    server.close()


def dropped() -> float:
    return REGISTRY.get_sample_value("dispatcher_telemetry_spans_dropped_total") or 0.0


async def test_a_black_hole_collector_changes_nothing_for_ingest_and_delivery(
    stack: StackFactory,
    webhook_sink: WebhookSink,
    black_hole: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Tracing on to an OTLP endpoint that never answers: every event is stored and
    delivered as usual, spans are dropped and counted, and shutdown is bounded."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{black_hole}")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "1")
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")
    monkeypatch.setenv("OTEL_BSP_MAX_QUEUE_SIZE", "16")
    monkeypatch.setenv("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "4")
    before = dropped()
    assert configure_tracing(os.environ)
    try:
        channels = {"webhook": webhook_channel(webhook_sink.url, ["monitor"])}
        async with stack(channels=channels) as s:
            ids = await s.publish(
                *(event_to(("webhook", "monitor")) for _ in range(40))
            )
            rows = await s.wait_final(ids, count=40)
        assert {r.status for r in rows} == {"delivered"}
        assert len(webhook_sink.received_on("/monitor")) == 40
        # Queue overflow, then failed exports.
        await wait_for(lambda: dropped() > before, "a dropped span counted", timeout=30)
    finally:
        shutdown_tracing(grace=2.0)
    assert not tracing.enabled()
