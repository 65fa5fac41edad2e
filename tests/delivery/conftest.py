"""Fixtures for delivery scenarios: sinks that tests start, and a replica factory."""

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from dispatcher.settings import Settings
from dispatcher.sinks.smtp import SmtpSink
from dispatcher.sinks.twilio import TwilioSink
from dispatcher.sinks.webhook import WebhookSink
from tests.delivery.harness import SMS_SID, SMS_TOKEN, Stack, StackFactory

pytestmark = [pytest.mark.postgres, pytest.mark.rabbitmq]


@pytest.fixture
async def webhook_sink() -> AsyncIterator[WebhookSink]:
    async with WebhookSink(seed=1234) as sink:
        yield sink


@pytest.fixture
async def smtp_sink() -> AsyncIterator[SmtpSink]:
    async with SmtpSink() as sink:
        yield sink


@pytest.fixture
async def smtp_backup() -> AsyncIterator[SmtpSink]:
    async with SmtpSink() as sink:
        yield sink


@pytest.fixture
async def twilio_sink() -> AsyncIterator[TwilioSink]:
    async with TwilioSink(SMS_SID, SMS_TOKEN) as sink:
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
