"""Fixtures for delivery scenarios: a second relay, and a replica factory (the sinks
themselves: tests/conftest.py)."""

from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)
from sqlalchemy.ext.asyncio import AsyncEngine

from dispatcher.db.engine import create_engine
from dispatcher.settings import Settings
from dispatcher.sinks.smtp import SmtpSink
from dispatcher.telemetry import tracing
from tests.delivery.harness import Stack, StackFactory

pytestmark = [pytest.mark.postgres, pytest.mark.rabbitmq]


@pytest.fixture
async def smtp_backup() -> AsyncIterator[SmtpSink]:
    async with SmtpSink() as sink:
        yield sink


@pytest.fixture
def stack(
    engine: AsyncEngine,
    database: str,
    make_settings: Callable[..., Settings],
    cleanup_broker: None,
) -> StackFactory:
    """``async with stack(channels={...}) as s``: ingest and delivery of one replica.

    ``deliver=False``: ingest only, to store a backlog before any worker runs.
    """

    def make(*, deliver: bool = True, **overrides: Any) -> Stack:
        settings = make_settings(database, **overrides)
        return Stack(settings, engine, deliver=deliver)

    return make


@pytest.fixture
async def roomy_engine(database: str) -> AsyncIterator[AsyncEngine]:
    """Two replicas and ingest at once need more than the default fixture's pool."""
    engine = create_engine(database, pool_size=12)
    yield engine
    await engine.dispose()


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """Tracing on for the test, every span kept in memory."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.install(provider)
    yield exporter
    tracing.uninstall()
    provider.shutdown()


def trace_of(span: ReadableSpan) -> int:
    assert span.context is not None
    return int(span.context.trace_id)
