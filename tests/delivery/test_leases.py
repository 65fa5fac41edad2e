"""Leases and their fence: the attempt budget of claims that never came back, and the
truthful log of an outcome that lost its lease."""

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from structlog.testing import capture_logs

from dispatcher.db.models import DeliveryStatus
from dispatcher.outbox.store import AttemptRecord, Outcome, claim, complete
from dispatcher.settings import Settings
from dispatcher.sinks.smtp import SmtpSink
from dispatcher.sinks.webhook import WebhookSink
from tests.delivery.harness import (
    Stack,
    email_channel,
    event_to,
    webhook_channel,
)

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.rabbitmq,
    pytest.mark.usefixtures("cleanup_broker"),
]

TEAM = ("email", "crisis-team@example.org")
MONITOR = ("webhook", "safety-monitor")


async def wait_until(condition: Callable[[], bool], what: str, timeout: float = 30):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def test_claims_whose_outcome_never_came_back_use_up_the_attempt_budget(
    engine: AsyncEngine,
    make_settings: Callable[..., Settings],
    database: str,
    webhook_sink: WebhookSink,
) -> None:
    """A delivery whose leases all ran out unrecorded is dead-lettered, not sent again."""
    max_attempts = 3
    retry = {"max_attempts": max_attempts, "base_delay": 0.05, "max_delay": 0.1}
    config = {
        "webhook": webhook_channel(webhook_sink.url, ["safety-monitor"], retry=retry)
    }
    settings = make_settings(database, channels=config)
    async with Stack(settings, engine, deliver=False) as ingest:
        (event_id,) = await ingest.publish(event_to(MONITOR))
        await ingest.wait_for(lambda rows: len(rows) == 1, event_ids=[event_id])
    # A replica that claimed it max_attempts times and never recorded an outcome (its
    # sends may all have reached the endpoint).
    async with engine.connect() as conn:
        driver = (await conn.get_raw_connection()).driver_connection
        assert driver is not None
        for _ in range(max_attempts):
            # Claimed again as soon as the previous lease has run out.
            leased: list[Any] = []
            while not leased:
                leased = (
                    await claim(
                        driver, "webhook", limit=1, lease_seconds=0.05, owner="stuck"
                    )
                ).rows
    async with Stack(settings, engine) as s:
        (row,) = await s.wait_final([event_id], count=1)
        dead = await s.audit("delivery.dead_lettered")
    assert webhook_sink.requests() == []
    assert (row.status, row.attempts) == ("dead", max_attempts + 1)
    assert [d.detail["reason"] for d in dead] == ["max_attempts"]


async def test_a_worker_that_lost_its_lease_logs_a_fenced_outcome_not_a_dead_letter(
    engine: AsyncEngine,
    make_settings: Callable[..., Settings],
    database: str,
    smtp_sink: SmtpSink,
) -> None:
    """An attempt that ends after its lease was taken over logs outcome_fenced; only a
    dead letter that was committed is logged as one."""
    smtp_sink.data_delay = 1.0  # the relay answers late: time for another to take over
    smtp_sink.fail(550, times=1)  # and the late answer is a permanent refusal
    config = {"email": email_channel(smtp_sink.port, concurrency=1, critical_reserve=0)}
    settings = make_settings(database, channels=config)
    with capture_logs() as logs:
        async with Stack(settings, engine) as s:
            (event_id,) = await s.publish(event_to(TEAM))
            await wait_until(lambda: smtp_sink.attempts == 1, "the message sent")
            async with engine.connect() as conn:
                # The sender stalls past its lease (as under SIGSTOP): the lease runs
                # out and another replica claims the delivery and delivers it. The
                # worker's only slot is busy, so it cannot claim it again itself.
                await conn.execute(
                    text(
                        "UPDATE deliveries SET next_attempt_at = now() - interval '1 s'"
                    )
                )
                await conn.commit()
                driver = (await conn.get_raw_connection()).driver_connection
                assert driver is not None
                (taken,) = (
                    await claim(
                        driver, "email", limit=1, lease_seconds=60, owner="replica-b"
                    )
                ).rows
                now = datetime.now(UTC)
                delivered = AttemptRecord(
                    taken.attempts,
                    "relay-1",
                    now,
                    now,
                    "delivered",
                    provider_code="250",
                )
                await complete(
                    driver,
                    [
                        Outcome(
                            taken.id,
                            taken.lease_token,
                            DeliveryStatus.DELIVERED,
                            provider="relay-1",
                            attempts=(delivered,),
                        )
                    ],
                )
            # The first sender's refusal arrives now, too late to count; its try is
            # still recorded, because it happened.
            (row,) = await s.deliveries([event_id])
            deadline = time.monotonic() + 30
            while len(await s.attempts(row.id)) < 2:
                assert time.monotonic() < deadline, "the late outcome never recorded"
                await asyncio.sleep(0.05)
            (row,) = await s.deliveries([event_id])
            dead = await s.audit("delivery.dead_lettered")
    assert (row.status, row.attempts) == ("delivered", 2)
    assert dead == []
    assert [e for e in logs if e["event"] == "dispatcher.delivery.dead_lettered"] == []
    (fenced,) = [e for e in logs if e["event"] == "dispatcher.delivery.outcome_fenced"]
    assert fenced["delivery_id"] == str(row.id)
    assert fenced["discarded"] == "dead"
