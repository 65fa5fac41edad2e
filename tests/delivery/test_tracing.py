"""One trace from publish to delivered, for every channel, through a real replica.

Spans go to an in-memory exporter; the far ends are the local SMTP, Twilio-compatible and
webhook servers, and the webhook receiver records the ``traceparent`` it was sent.
"""

import json
import uuid

import aio_pika
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)
from opentelemetry.trace import SpanKind

from dispatcher.sinks.smtp import SmtpSink
from dispatcher.sinks.twilio import TwilioSink
from dispatcher.sinks.webhook import WebhookSink
from tests.delivery.conftest import trace_of
from tests.delivery.harness import (
    StackFactory,
    email_channel,
    event_to,
    sms_channel,
    webhook_channel,
)

pytestmark = [pytest.mark.postgres, pytest.mark.rabbitmq]

EMAIL = ("email", "crisis-team@example.org")
PHONE = ("sms", "+15550100001")


async def test_one_trace_from_publish_to_delivered_on_every_channel(
    stack: StackFactory,
    spans: InMemorySpanExporter,
    smtp_sink: SmtpSink,
    twilio_sink: TwilioSink,
    webhook_sink: WebhookSink,
) -> None:
    """publish -> process -> deliver (with a send event per provider try) share the producer's trace id for email,
    SMS and webhook; a retried delivery's attempts join it too; the webhook receiver
    gets that trace id in ``traceparent``; no span carries an address or number."""
    webhook_sink.respond("/monitor", 503, times=1)
    channels = {
        "email": email_channel(smtp_sink.port),
        "sms": sms_channel(twilio_sink.base_url),
        "webhook": webhook_channel(webhook_sink.url, ["monitor"]),
    }
    async with stack(channels=channels) as s:
        (event_id,) = await s.publish(
            event_to(EMAIL, PHONE, ("webhook", "monitor"), severity="critical")
        )
        rows = await s.wait_final([event_id], count=3)
    assert {r.status for r in rows} == {"delivered"}
    finished = spans.get_finished_spans()

    (publish,) = [s for s in finished if s.kind is SpanKind.PRODUCER]
    trace_id = trace_of(publish)
    assert publish.attributes is not None
    assert publish.attributes["messaging.system"] == "rabbitmq"
    assert publish.attributes["messaging.message.id"] == str(event_id)

    (process,) = [s for s in finished if s.kind is SpanKind.CONSUMER]
    assert process.attributes is not None
    assert process.attributes["messaging.operation.type"] == "process"
    assert process.attributes["messaging.batch.message_count"] == 1
    assert trace_of(process) == trace_id  # a batch of one is the producer's child
    assert [link.context.span_id for link in process.links] == [
        publish.context.span_id if publish.context else None
    ]

    attempts = [s for s in finished if s.name.startswith("deliver ")]
    by_channel: dict[str, list[ReadableSpan]] = {}
    for span in attempts:
        assert span.attributes is not None
        by_channel.setdefault(str(span.attributes["dispatcher.channel"]), []).append(
            span
        )
        assert trace_of(span) == trace_id
        assert span.parent is not None
        assert span.parent.span_id == (
            publish.context.span_id if publish.context else 0
        )
    assert sorted(by_channel) == ["email", "sms", "webhook"]
    for channel in ("email", "sms"):
        (only,) = by_channel[channel]
        assert only.attributes is not None
        assert only.attributes["dispatcher.outcome"] == "delivered"
    first, second = sorted(
        by_channel["webhook"],
        key=lambda s: (
            int(str(s.attributes["dispatcher.attempt"])) if s.attributes else 0
        ),
    )
    assert first.attributes is not None
    assert second.attributes is not None
    assert (first.attributes["dispatcher.outcome"], first.attributes["error.type"]) == (
        "pending",
        "provider_transient",
    )
    assert second.attributes["dispatcher.outcome"] == "delivered"

    assert all(s.kind is SpanKind.CLIENT for s in attempts)
    sends = [
        (span, event)
        for span in attempts
        for event in span.events
        if event.name == "send"
    ]
    assert len(sends) == len(attempts)  # one provider per channel here: one try each
    codes = sorted(
        str(event.attributes.get("dispatcher.provider_status_code"))
        for span, event in sends
        if event.attributes
        and span.attributes
        and span.attributes["dispatcher.channel"] == "webhook"
    )
    assert codes == ["200", "503"]
    webhook_providers = {
        str(event.attributes.get("dispatcher.provider"))
        for span, event in sends
        if event.attributes
        and span.attributes
        and span.attributes["dispatcher.channel"] == "webhook"
    }
    assert webhook_providers == {"monitor"}  # the endpoint's configured name

    received = webhook_sink.received_on("/monitor")
    assert len(received) == 2
    for request in received:
        version, trace_hex, _span_hex, _flags = request.headers["traceparent"].split(
            "-"
        )
        assert (version, int(trace_hex, 16)) == ("00", trace_id)

    text = repr([(s.name, dict(s.attributes or {}), s.events) for s in finished])
    for secret in (EMAIL[1], PHONE[1]):
        assert secret not in text


async def test_an_event_published_without_a_trace_joins_its_ingest_trace(
    stack: StackFactory,
    spans: InMemorySpanExporter,
    webhook_sink: WebhookSink,
) -> None:
    """An event whose message carries no ``traceparent`` gets the trace of the ingest
    ``process`` span that stores it: each attempt (a retry too) is that span's child, the
    event row keeps its ``traceparent``, and the webhook receiver gets that trace id."""
    webhook_sink.respond("/monitor", 503, times=1)
    channels = {"webhook": webhook_channel(webhook_sink.url, ["monitor"])}
    event = event_to(("webhook", "monitor"), severity="critical")
    async with stack(channels=channels) as s:
        connection = await aio_pika.connect(s.settings.amqp_url.get_secret_value())
        async with connection:
            channel = await connection.channel(publisher_confirms=True)
            exchange = await channel.get_exchange(s.settings.exchange, ensure=False)
            await exchange.publish(
                aio_pika.Message(json.dumps(event).encode()),  # no headers at all
                routing_key=event["type"],
            )
        event_id = uuid.UUID(event["event_id"])
        rows = await s.wait_final([event_id], count=1)
        (stored,) = await s.rows(
            "SELECT traceparent FROM events WHERE id = :id", id=event_id
        )
    assert [r.status for r in rows] == ["delivered"]
    finished = spans.get_finished_spans()
    assert not [s for s in finished if s.kind is SpanKind.PRODUCER]
    (process,) = [s for s in finished if s.kind is SpanKind.CONSUMER]
    assert process.context is not None
    attempts = [s for s in finished if s.name == "deliver webhook"]
    assert len(attempts) == 2
    for attempt in attempts:
        assert trace_of(attempt) == trace_of(process)
        assert attempt.parent is not None
        assert attempt.parent.span_id == process.context.span_id
    ctx = process.context
    assert stored.traceparent == (
        f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{ctx.trace_flags:02x}"
    )
    for request in webhook_sink.received_on("/monitor"):
        trace_hex = request.headers["traceparent"].split("-")[1]
        assert int(trace_hex, 16) == trace_of(process)
