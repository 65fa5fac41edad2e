"""The redaction processor removes what must never be logged, even when logged on purpose."""

import io
import json
import logging

import pytest
import structlog
from opentelemetry.sdk.trace import TracerProvider

from dispatcher.logs import add_trace_ids, configure_logging, redact, scrub

EMAIL = "maria.lopez@example.org"
PHONE = "+447700900123"
TOKEN = "dsp_9f8e7d6c5b4a39281706f5e4d3c2b1a0"
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def logged(**fields: object) -> str:
    out = io.StringIO()
    logger = structlog.wrap_logger(
        structlog.PrintLogger(out),
        processors=[
            add_trace_ids,
            structlog.processors.format_exc_info,
            redact,
            structlog.processors.JSONRenderer(),
        ],
    )
    logger.info("dispatcher.test", **fields)
    return out.getvalue()


@pytest.mark.parametrize(
    ("fields", "leaked"),
    [
        ({"to": EMAIL}, EMAIL),
        ({"recipient": PHONE}, PHONE),
        ({"note": f"call {PHONE} or write to {EMAIL}"}, EMAIL),
        ({"note": f"call {PHONE} now"}, PHONE),
        ({"error": f"Authorization: Bearer {TOKEN}"}, TOKEN),
        ({"headers": {"authorization": f"Bearer {TOKEN}"}}, TOKEN),
        ({"detail": f"signing with {SECRET}"}, SECRET),
        ({"url": "amqp://dispatcher:hunter2-pw@rabbit:5672/"}, "hunter2-pw"),
        ({"dsn": "host=db password=hunter2-pw user=x"}, "hunter2-pw"),
        ({"payload": {"data": {"note": "self-harm risk"}}}, "self-harm risk"),
        ({"data": ["self-harm risk"]}, "self-harm risk"),
        ({"body": b"self-harm risk"}, "self-harm risk"),
        ({"rows": [{"to": EMAIL}]}, EMAIL),
    ],
    ids=[
        "recipient-key",
        "phone-key",
        "email-in-text",
        "phone-in-text",
        "bearer-token",
        "nested-header",
        "webhook-secret",
        "url-credentials",
        "password-pair",
        "payload-field",
        "data-field",
        "body-bytes",
        "nested-list",
    ],
)
def test_sensitive_values_are_redacted(fields: dict[str, object], leaked: str) -> None:
    """Each sensitive value logged by mistake is gone from the rendered line."""
    line = logged(**fields)
    assert leaked not in line
    assert json.loads(line)["event"] == "dispatcher.test"


def test_ids_codes_and_plain_text_are_kept() -> None:
    """Ids, counts, error classes and timestamps pass untouched."""
    fields = {
        "delivery_id": "5f0c1e8e-54a4-4f1e-9d8e-6e8e7c1f0a11",
        "attempts": 3,
        "error_class": "provider_transient",
        "at": "2024-05-01T10:00:00+00:00",
        "provider": "relay-1",
    }
    assert json.loads(logged(**fields)) == {"event": "dispatcher.test", **fields}


def test_an_exception_text_is_redacted_too() -> None:
    """A traceback whose message carries an address is scrubbed after formatting."""
    try:
        raise ValueError(f"cannot send to {EMAIL}")
    except ValueError:
        line = logged(exc_info=True)
    assert EMAIL not in line
    assert "[email]" in line


def test_lines_in_a_span_carry_its_trace_and_span_ids() -> None:
    """Inside a span, the line carries the span's trace_id and span_id (W3C hex)."""
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("work") as span:
        entry = json.loads(logged())
    ctx = span.get_span_context()
    assert entry["trace_id"] == format(ctx.trace_id, "032x")
    assert entry["span_id"] == format(ctx.span_id, "016x")
    assert "trace_id" not in json.loads(logged())


def test_library_logs_are_redacted(capsys: pytest.CaptureFixture[str]) -> None:
    """A library's stdlib log record goes through the same redaction."""
    configure_logging("info")
    try:
        logging.getLogger("somelib").warning("connect failed for %s", EMAIL)
        err = capsys.readouterr().err
    finally:
        logging.getLogger().handlers.clear()
        structlog.reset_defaults()
    assert "connect failed" in err
    assert EMAIL not in err


def test_scrub_leaves_text_without_candidates_alone() -> None:
    """The common case: nothing to redact, the same string back."""
    text = "dispatcher.delivery.retry_scheduled"
    assert scrub(text) is text
