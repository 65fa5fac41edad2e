"""An attempt in a trace that was not sampled costs no span when the sampler is parent-based."""

from collections.abc import Iterator, Sequence

import pytest
from opentelemetry.context import Context
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_ON,
    ParentBased,
    Sampler,
    SamplingResult,
)
from opentelemetry.trace import Link, SpanKind, TraceState
from opentelemetry.util.types import Attributes

from dispatcher.telemetry import tracing

TRACE = "0af7651916cd43dd8448eb211c80319c"
UNSAMPLED = f"00-{TRACE}-b7ad6b7169203331-00"
SAMPLED = f"00-{TRACE}-b7ad6b7169203331-01"


class CountingParentBased(ParentBased):
    """The SDK's parent-based sampler (``parentbased_always_on``), counting its calls."""

    def __init__(self) -> None:
        super().__init__(ALWAYS_ON)
        self.calls = 0

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: TraceState | None = None,
    ) -> SamplingResult:
        self.calls += 1
        return super().should_sample(
            parent_context, trace_id, name, kind, attributes, links, trace_state
        )


def _traced(sampler: Sampler) -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=sampler)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.install(provider)
    try:
        yield exporter
    finally:
        tracing.uninstall()
        provider.shutdown()


@pytest.fixture
def sampler() -> CountingParentBased:
    return CountingParentBased()


@pytest.fixture
def exporter(sampler: CountingParentBased) -> Iterator[InMemorySpanExporter]:
    yield from _traced(sampler)


def _attempt(traceparent: str) -> tuple[object, str | None, tuple[str, str] | None]:
    with tracing.delivery_attempt(
        "webhook",
        traceparent=traceparent,
        delivery_id="d-1",
        event_id="e-1",
        attempt=1,
        severity="critical",
    ) as span:
        tracing.provider_tried(
            provider="monitor",
            outcome="delivered",
            error_class=None,
            provider_code="200",
        )
        tracing.attempt_ended(
            span, status="delivered", provider="monitor", error_class=None
        )
        return span, tracing.current_traceparent(), tracing.log_ids()


def test_an_unsampled_trace_starts_no_span_and_keeps_its_context(
    sampler: CountingParentBased, exporter: InMemorySpanExporter
) -> None:
    """With a parent-based sampler and a stored context that was not sampled, the
    attempt asks no sampler and starts no span; the stored context is current, so the
    webhook's ``traceparent`` and the log lines carry the event's trace id."""
    span, traceparent, ids = _attempt(UNSAMPLED)
    assert span is None
    assert sampler.calls == 0
    assert traceparent == UNSAMPLED
    assert ids is not None
    assert ids[0] == TRACE
    assert exporter.get_finished_spans() == ()
    assert tracing.current_traceparent() is None  # left the context again


def test_a_sampled_trace_still_records_its_attempt(
    sampler: CountingParentBased, exporter: InMemorySpanExporter
) -> None:
    """A stored context that was sampled gets its ``deliver`` span, the stored span's
    child, with the attempt's attributes and ``send`` event."""
    span, traceparent, _ = _attempt(SAMPLED)
    assert span is not None
    assert sampler.calls == 1
    (finished,) = exporter.get_finished_spans()
    assert finished.parent is not None
    assert f"{finished.parent.span_id:016x}" == "b7ad6b7169203331"
    assert traceparent == f"00-{TRACE}-{finished.context.span_id:016x}-01"
    assert dict(finished.attributes or {})["dispatcher.outcome"] == "delivered"
    assert [e.name for e in finished.events] == ["send"]


def test_a_sampler_that_is_not_parent_based_is_still_asked() -> None:
    """Only the SDK's parent-based samplers are known to drop an unsampled parent's
    children; any other sampler decides each attempt (here: always on, so it records)."""
    for exporter in _traced(ALWAYS_ON):
        span, _, _ = _attempt(UNSAMPLED)
        assert span is not None
        assert len(exporter.get_finished_spans()) == 1
