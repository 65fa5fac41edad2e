"""Deliveries that wait behind an open breaker still end at their ``max_age``.

An open breaker keeps rows from being claimed, and ``max_age`` used to be checked only
when an attempt failed: such rows stayed pending for ever, out of the dead-letter queue.
Real breakers opened by real failures (an HTTP receiver answering 503, an SMTP relay that
is down); nothing is mocked.
"""

from typing import Any

import pytest

from dispatcher.sinks.smtp import SmtpSink
from dispatcher.sinks.webhook import WebhookSink
from tests.delivery.harness import (
    StackFactory,
    email_channel,
    event_to,
    webhook_channel,
)
from tests.waiting import wait_for

pytestmark = [pytest.mark.postgres, pytest.mark.rabbitmq]

#: Opens after three failures and stays open for the whole test.
STAYS_OPEN = {
    "failure_threshold": 3,
    "failure_rate": 1.0,
    "min_calls": 100,
    "open_seconds": 600.0,
}
#: Old after four seconds; tries are frequent until the breaker opens.
SHORT_LIFE = {"max_attempts": 30, "base_delay": 0.05, "max_delay": 0.2, "max_age": 4.0}


def dead_reasons(audit: list[Any]) -> dict[str, str]:
    return {str(a.delivery_id): a.detail["reason"] for a in audit}


async def test_rows_behind_an_open_endpoint_breaker_are_dead_lettered_at_max_age(
    stack: StackFactory, webhook_sink: WebhookSink
) -> None:
    """Never-claimed rows of a blocked endpoint die at max_age; other endpoints flow."""
    webhook_sink.respond("/safety-monitor", 503)
    config = {
        "webhook": webhook_channel(
            webhook_sink.url,
            ["safety-monitor", "other"],
            breaker=STAYS_OPEN,
            retry=SHORT_LIFE,
        )
    }
    async with stack(channels=config) as s:
        tried = await s.publish(
            *(event_to(("webhook", "safety-monitor")) for _ in range(3))
        )
        await wait_for(
            lambda: s.audit("breaker.transition"), "the breaker to open", timeout=10
        )
        # Stored while the breaker is open: no claim ever takes them.
        late = await s.publish(
            *(event_to(("webhook", "safety-monitor")) for _ in range(2)),
            event_to(("webhook", "other")),
        )
        rows = await s.wait_final([*tried, *late], count=6, timeout=30)
        reasons = dead_reasons(await s.audit("delivery.dead_lettered"))
    blocked = [r for r in rows if r.recipient == "safety-monitor"]
    assert {r.status for r in blocked} == {"dead"}
    assert {reasons[str(r.id)] for r in blocked} == {"max_age"}
    never_tried = [r for r in blocked if r.event_id in late]
    assert [r.attempts for r in never_tried] == [0, 0]
    assert all("max_age" in r.last_error_message for r in never_tried)
    # Only the three failures that opened the breaker reached the endpoint.
    assert len(webhook_sink.received_on("/safety-monitor")) == 3
    (other,) = [r for r in rows if r.recipient == "other"]
    assert other.status == "delivered"


async def test_email_with_every_relay_open_is_dead_lettered_at_max_age(
    stack: StackFactory, smtp_sink: SmtpSink
) -> None:
    """With every provider's breaker open nothing is claimed; rows still end at max_age."""
    await smtp_sink.go_down()
    config = {
        "email": email_channel(smtp_sink.port, breaker=STAYS_OPEN, retry=SHORT_LIFE)
    }
    async with stack(channels=config) as s:
        tried = await s.publish(
            *(event_to(("email", "team@example.org")) for _ in range(3))
        )
        await wait_for(
            lambda: s.audit("breaker.transition"), "the breaker to open", timeout=10
        )
        late = await s.publish(event_to(("email", "team@example.org")))
        rows = await s.wait_final([*tried, *late], count=4, timeout=30)
        reasons = dead_reasons(await s.audit("delivery.dead_lettered"))
    assert {r.status for r in rows} == {"dead"}
    assert {reasons[str(r.id)] for r in rows} == {"max_age"}
    (never_tried,) = [r for r in rows if r.event_id in late]
    assert never_tried.attempts == 0
