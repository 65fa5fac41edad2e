"""The scenarios that motivated the product, across email, SMS and webhook at once.

Every far end is a real local server: SMTP (aiosmtpd), a Twilio-compatible API driven
through the real twilio client, and an HTTP receiver. Channels fail and recover for real:
servers stop listening, hang, or answer with errors.
"""

import asyncio
from typing import Any

import pytest

from dispatcher.sinks.smtp import SmtpSink
from dispatcher.sinks.twilio import TwilioSink
from dispatcher.sinks.webhook import WebhookSink
from tests.delivery.harness import (
    StackFactory,
    email_channel,
    event_to,
    sms_channel,
    webhook_channel,
)

pytestmark = [pytest.mark.postgres, pytest.mark.rabbitmq]

TEAM = ("email", "crisis-team@example.org")
ON_CALL = ("sms", "+15550100001")
MONITOR = ("webhook", "safety-monitor")


def all_channels(
    smtp: SmtpSink, twilio: TwilioSink, webhook: WebhookSink, **overrides: Any
) -> dict[str, Any]:
    return {
        "email": email_channel(smtp.port, **overrides),
        "sms": sms_channel(twilio.base_url, **overrides),
        "webhook": webhook_channel(webhook.url, ["safety-monitor"], **overrides),
    }


def by_channel(rows: list[Any]) -> dict[str, Any]:
    return {r.channel: r for r in rows}


async def test_smtp_timing_out_during_a_crisis_delays_only_email(
    stack: StackFactory,
    smtp_sink: SmtpSink,
    twilio_sink: TwilioSink,
    webhook_sink: WebhookSink,
) -> None:
    smtp_sink.hang_on_connect = (
        True  # accepts TCP, never greets: only the deadline ends it
    )
    channels = all_channels(smtp_sink, twilio_sink, webhook_sink, deadline_seconds=1.0)
    async with stack(channels=channels) as s:
        (event_id,) = await s.publish(
            event_to(TEAM, ON_CALL, MONITOR, severity="critical")
        )
        rows = await s.wait_deliveries(
            lambda rows: (
                by_channel(rows)["sms"].status == "delivered"
                and by_channel(rows)["webhook"].status == "delivered"
                and by_channel(rows)["email"].last_error_class == "timeout"
            ),
            event_ids=[event_id],
            what="SMS and webhook delivered while email times out",
        )
        assert by_channel(rows)["email"].status in {"pending", "in_flight"}
        assert [a.kind for a in await s.audit("event.received")] == ["event.received"]

        smtp_sink.heal()
        rows = await s.wait_final([event_id], count=3)
    assert {r.status for r in rows} == {"delivered"}
    assert by_channel(rows)["email"].attempts >= 2
    assert [m.delivery_id for m in smtp_sink.received] == [
        str(by_channel(rows)["email"].id)
    ]
    assert len(twilio_sink.received) == 1
    assert len(webhook_sink.received_on("/safety-monitor")) == 1


async def test_sms_gateway_unreachable_email_and_webhook_still_sent(
    stack: StackFactory,
    smtp_sink: SmtpSink,
    twilio_sink: TwilioSink,
    webhook_sink: WebhookSink,
) -> None:
    await twilio_sink.go_down()
    async with stack(channels=all_channels(smtp_sink, twilio_sink, webhook_sink)) as s:
        (event_id,) = await s.publish(
            event_to(TEAM, ON_CALL, MONITOR, severity="critical")
        )
        rows = await s.wait_deliveries(
            lambda rows: (
                by_channel(rows)["email"].status == "delivered"
                and by_channel(rows)["webhook"].status == "delivered"
                and by_channel(rows)["sms"].last_error_class == "connection"
            ),
            event_ids=[event_id],
            what="email and webhook delivered while SMS is refused",
        )
        assert len(smtp_sink.received) == 1
        await twilio_sink.come_up()
        rows = await s.wait_final([event_id], count=3)
    assert {r.status for r in rows} == {"delivered"}
    assert len(twilio_sink.received) == 1


async def test_every_channel_down_nothing_lost_everything_delivered_after_recovery(
    stack: StackFactory,
    smtp_sink: SmtpSink,
    twilio_sink: TwilioSink,
    webhook_sink: WebhookSink,
) -> None:
    await smtp_sink.go_down()
    await twilio_sink.go_down()
    await webhook_sink.go_down()
    async with stack(channels=all_channels(smtp_sink, twilio_sink, webhook_sink)) as s:
        ids = await s.publish(
            *(event_to(TEAM, ON_CALL, MONITOR, severity="critical") for _ in range(5))
        )
        rows = await s.wait_deliveries(
            lambda rows: (
                len(rows) == 15
                and all(r.last_error_class == "connection" for r in rows)
            ),
            event_ids=ids,
            what="every delivery tried and failed",
        )
        assert {r.status for r in rows} <= {"pending", "in_flight"}
        assert len(await s.audit("event.received")) == 5
        await asyncio.sleep(1.0)  # breakers open; nothing is given up meanwhile
        rows = await s.deliveries(ids)
        assert len(rows) == 15
        assert "dead" not in {r.status for r in rows}

        await smtp_sink.come_up()
        await twilio_sink.come_up()
        await webhook_sink.come_up()
        rows = await s.wait_final(ids, count=15, timeout=40)
    assert {r.status for r in rows} == {"delivered"}
    assert len(smtp_sink.received) == 5
    assert len(twilio_sink.received) == 5
    assert sum(webhook_sink.accepted.values()) == 5


async def test_primary_smtp_down_the_secondary_relay_is_used_in_the_same_attempt(
    stack: StackFactory, smtp_sink: SmtpSink, smtp_backup: SmtpSink
) -> None:
    await smtp_sink.go_down()
    channels = {"email": email_channel(smtp_sink.port, smtp_backup.port)}
    async with stack(channels=channels) as s:
        (event_id,) = await s.publish(event_to(TEAM))
        (row,) = await s.wait_final([event_id], count=1)
        attempts = await s.attempts(row.id)
    assert (row.status, row.attempts, row.last_provider) == ("delivered", 1, "relay-2")
    assert [(a.attempt, a.provider, a.outcome, a.error_class) for a in attempts] == [
        (1, "relay-1", "failed", "connection"),
        (1, "relay-2", "delivered", None),
    ]
    assert len(smtp_backup.received) == 1


async def test_permanent_refusals_are_dead_lettered_at_once(
    stack: StackFactory, smtp_sink: SmtpSink, twilio_sink: TwilioSink
) -> None:
    smtp_sink.fail(550, stage="rcpt")
    twilio_sink.fail(400, 21211)
    channels = {
        "email": email_channel(smtp_sink.port),
        "sms": sms_channel(twilio_sink.base_url),
    }
    async with stack(channels=channels) as s:
        (event_id,) = await s.publish(event_to(TEAM, ON_CALL))
        rows = await s.wait_final([event_id], count=2)
        dead = await s.audit("delivery.dead_lettered")
    assert {(r.channel, r.status, r.attempts) for r in rows} == {
        ("email", "dead", 1),
        ("sms", "dead", 1),
    }
    codes = {r.channel: r.last_error_class for r in rows}
    assert codes == {"email": "provider_permanent", "sms": "provider_permanent"}
    assert {d.detail["reason"] for d in dead} == {"permanent_error"}
