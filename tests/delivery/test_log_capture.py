"""A full run's logs, captured as rendered: ids, trace ids, and no address or number."""

import io
import json
import logging
import sys
from collections.abc import Iterator

import pytest
import structlog
from opentelemetry.sdk.trace import TracerProvider

from dispatcher.logs import configure_logging
from dispatcher.sinks.smtp import SmtpSink
from dispatcher.sinks.twilio import TwilioSink
from dispatcher.sinks.webhook import WebhookSink
from dispatcher.telemetry import tracing
from tests.delivery.harness import (
    StackFactory,
    email_channel,
    event_to,
    sms_channel,
    webhook_channel,
)

pytestmark = [pytest.mark.postgres, pytest.mark.rabbitmq]

EMAIL = ("email", "jordan.okafor@example.org")
PHONE = ("sms", "+447700900456")


@pytest.fixture
def traced() -> Iterator[None]:
    provider = TracerProvider()
    tracing.install(provider)
    yield
    tracing.uninstall()
    provider.shutdown()


@pytest.fixture
def json_logs(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.StringIO]:
    """What the product's logging renders (it writes to ``sys.stderr``)."""
    out = io.StringIO()
    monkeypatch.setattr(sys, "stderr", out)
    configure_logging("debug")
    # Loggers used by earlier tests may be cached with an older configuration.
    structlog.configure(cache_logger_on_first_use=False)
    yield out
    logging.getLogger().handlers.clear()
    structlog.reset_defaults()


@pytest.mark.usefixtures("traced")
async def test_a_full_run_logs_ids_and_trace_ids_and_no_address(
    stack: StackFactory,
    smtp_sink: SmtpSink,
    twilio_sink: TwilioSink,
    webhook_sink: WebhookSink,
    json_logs: io.StringIO,
) -> None:
    """Ingest, an e-mail, an SMS and a webhook that fails once (its breaker opens and
    closes): every line is JSON, none holds the addresses or numbers, and a line logged
    during an attempt carries its delivery_id, event_id and trace_id."""
    webhook_sink.respond("/monitor", 503, times=1)
    breaker = {
        "failure_threshold": 1,
        "failure_rate": 1.0,
        "min_calls": 100,
        "open_seconds": 0.2,
    }
    channels = {
        "email": email_channel(smtp_sink.port),
        "sms": sms_channel(twilio_sink.base_url),
        "webhook": webhook_channel(webhook_sink.url, ["monitor"], breaker=breaker),
    }
    async with stack(channels=channels) as s:
        (event_id,) = await s.publish(
            event_to(
                EMAIL,
                PHONE,
                ("webhook", "monitor"),
                severity="critical",
                data={"contact": EMAIL[1], "callback": PHONE[1]},
            )
        )
        rows = await s.wait_final([event_id], count=3)
    assert {r.status for r in rows} == {"delivered"}
    err = json_logs.getvalue()
    lines = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    events = {line["event"] for line in lines}
    assert "dispatcher.ingest.started" in events, "logging must be captured"
    for leaked in (EMAIL[1], PHONE[1], "jordan", "900456"):
        assert leaked not in err
    (opened, *_) = [
        line for line in lines if line["event"] == "dispatcher.breaker.transition"
    ]
    webhook = next(r for r in rows if r.channel == "webhook")
    assert opened["delivery_id"] == str(webhook.id)
    assert opened["event_id"] == str(event_id)
    assert len(opened["trace_id"]) == 32
