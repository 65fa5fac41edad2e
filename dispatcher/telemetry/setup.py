"""Tracing from the standard OTEL_* variables: off unless they ask for it, bounded when on.

On when ``OTEL_TRACES_EXPORTER`` names an exporter (``otlp``, ``console``), or when it is
unset and an OTLP endpoint is (``OTEL_EXPORTER_OTLP_ENDPOINT`` or
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``); off with ``OTEL_SDK_DISABLED=true`` or
``OTEL_TRACES_EXPORTER=none``. The SDK reads the rest itself (``OTEL_SERVICE_NAME``,
``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_TRACES_SAMPLER``, ``OTEL_BSP_*``,
``OTEL_EXPORTER_OTLP_*``), as the specification says.

Exporting never costs a delivery: spans go to a bounded queue that a thread of the batch
processor drains; a full queue or a failed export drops spans and counts them
(``dispatcher_telemetry_spans_dropped_total``); nothing on the event loop waits for it.
"""

import threading
from collections.abc import Mapping, Sequence

import structlog
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SpanExporter,
    SpanExportResult,
)

from dispatcher.errors import ConfigError
from dispatcher.telemetry import metrics, tracing
from dispatcher.telemetry.switch import wanted_exporters

log = structlog.get_logger("dispatcher.telemetry")

#: Seconds an OTLP export may take unless OTEL_EXPORTER_OTLP_(TRACES_)TIMEOUT says.
DEFAULT_EXPORT_TIMEOUT = 5.0
#: Seconds the shutdown may spend flushing what is queued; then it is dropped.
SHUTDOWN_GRACE = 5.0


class CountingExporter(SpanExporter):
    """Counts the spans of every failed export as dropped."""

    def __init__(self, inner: SpanExporter) -> None:
        self._inner = inner

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        try:
            result = self._inner.export(spans)
        except Exception:  # noqa: BLE001 - an exporter bug drops spans, nothing else
            result = SpanExportResult.FAILURE
        if result is not SpanExportResult.SUCCESS:
            metrics.spans_dropped(len(spans))
        return result

    def shutdown(self) -> None:
        self._inner.shutdown()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return self._inner.force_flush(timeout_millis)


class BoundedSpanProcessor(BatchSpanProcessor):
    """``BatchSpanProcessor`` that counts the spans its full queue drops."""

    def on_end(self, span: ReadableSpan) -> None:
        queue = getattr(self._batch_processor, "_queue", None)
        if (
            queue is not None
            and queue.maxlen is not None
            and len(queue) >= queue.maxlen
        ):
            metrics.spans_dropped(1)
        super().on_end(span)


def _exporter(name: str, environ: Mapping[str, str]) -> SpanExporter:
    if name == "console":
        return ConsoleSpanExporter()
    if name != "otlp":
        raise ConfigError(f"OTEL_TRACES_EXPORTER: unknown exporter {name!r}")
    protocol = environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or environ.get(
        "OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"
    )
    if protocol != "http/protobuf":
        raise ConfigError(
            f"OTEL_EXPORTER_OTLP_PROTOCOL: {protocol!r} is not supported, use http/protobuf"
        )
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # noqa: PLC0415 - only when tracing is on
        OTLPSpanExporter,
    )

    timeout = environ.get("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT") or environ.get(
        "OTEL_EXPORTER_OTLP_TIMEOUT"
    )
    return OTLPSpanExporter(timeout=None if timeout else DEFAULT_EXPORT_TIMEOUT)


def configure_tracing(environ: Mapping[str, str]) -> bool:
    """Install tracing as the OTEL_* variables say; returns whether it is on.

    Raises:
        ConfigError: an exporter or protocol this build cannot provide.
    """
    names = wanted_exporters(environ)
    if not names:
        return False
    resource = Resource.create(
        {} if "OTEL_SERVICE_NAME" in environ else {SERVICE_NAME: "dispatcher"}
    )
    provider = TracerProvider(resource=resource)
    for name in names:
        provider.add_span_processor(
            BoundedSpanProcessor(CountingExporter(_exporter(name, environ)))
        )
    tracing.install(provider)
    log.info("dispatcher.telemetry.tracing_on", exporters=names)
    return True


def shutdown_tracing(grace: float = SHUTDOWN_GRACE) -> None:
    """Flush and stop the exporters, waiting ``grace`` seconds at most (a collector that
    never answers must not hold up a shutdown)."""
    provider = tracing.uninstall()
    if provider is None:
        return
    worker = threading.Thread(
        target=provider.shutdown, name="otel-shutdown", daemon=True
    )
    worker.start()
    worker.join(grace)
