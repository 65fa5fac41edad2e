"""An error escaping a delivery attempt marks its span by type, never by its text."""

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)
from opentelemetry.trace import StatusCode

from dispatcher.telemetry import tracing


def test_an_escaping_error_leaves_its_type_and_not_its_text() -> None:
    """A bug escaping ``delivery_attempt`` sets the span's status to ERROR with the
    exception's type; its message (which may hold an address) is in no status, event or
    attribute, and the span still ends and leaves the current context."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.install(provider)
    try:
        with (
            pytest.raises(ValueError, match="canary"),
            tracing.delivery_attempt(
                "email",
                traceparent=None,
                delivery_id="d-1",
                event_id="e-1",
                attempt=1,
                severity="critical",
            ),
        ):
            raise ValueError("canary-pii@example.org")
        assert tracing.log_ids() is None
    finally:
        tracing.uninstall()
    [span] = exporter.get_finished_spans()
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description == "ValueError"
    assert "canary" not in repr(
        (span.status.description, span.events, dict(span.attributes or {}))
    )
    assert [e.name for e in span.events] == []
