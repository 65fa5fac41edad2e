"""The wire encoder writes what the SDK's OTLP encoder builds, byte for byte in meaning."""

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)
from opentelemetry.trace import (
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TraceState,
    set_span_in_context,
)

from dispatcher.telemetry.otlp_wire import WireSpanExporter, encode_request


def finished_spans() -> list[ReadableSpan]:
    """Spans with every field the encoder writes: each attribute type, events, links,
    statuses, remote and local parents, trace state, two scopes and two resources."""
    spans: list[ReadableSpan] = []
    remote = SpanContext(
        0x0AF7651916CD43DD8448EB211C80319C,
        0xB7AD6B7169203331,
        is_remote=True,
        trace_flags=TraceFlags(TraceFlags.SAMPLED),
        trace_state=TraceState([("vendor", "opaque"), ("other", "x-1")]),
    )
    for resource in (
        Resource.create({"service.name": "dispatcher"}),
        Resource.create({"service.name": "other", "host.cores": 2}, "https://s/1"),
    ):
        memory = InMemorySpanExporter()
        provider = TracerProvider(resource=resource)
        provider.add_span_processor(SimpleSpanProcessor(memory))
        tracer = provider.get_tracer("dispatcher")
        scoped = provider.get_tracer("faststream", "0.7", "https://s/2", {"a": "b"})
        with tracer.start_as_current_span(
            "deliver email",
            context=set_span_in_context(NonRecordingSpan(remote), Context()),
            kind=SpanKind.CLIENT,
            attributes={
                "s": "text é",
                "empty": "",
                "i": 3,
                "negative": -7,
                "big": 1 << 62,
                "f": 2.5,
                "t": True,
                "no": False,
                "strings": ("a", "b"),
                "ints": [1, 2],
                "none": [],
            },
        ) as span:
            span.add_event("send", {"dispatcher.provider": "relay-1", "code": 250})
            span.add_event("bare")
            span.add_link(remote, {"messaging.message.id": "m-1"})
            span.set_status(Status(StatusCode.ERROR, "timeout"))
            with scoped.start_as_current_span(
                "process q", kind=SpanKind.CONSUMER
            ) as child:
                child.set_status(Status(StatusCode.OK))
        for kind in SpanKind:
            tracer.start_span(f"k {kind.name}", kind=kind).end()
        spans.extend(memory.get_finished_spans())
    return spans


def test_the_wire_encoding_parses_to_what_the_sdk_encoder_builds() -> None:
    """Every span field and attribute type, grouped by resource and scope: the SDK's
    own protobuf classes read the bytes back as exactly the SDK encoder's request."""
    spans = finished_spans()
    wanted = encode_spans(spans)
    assert ExportTraceServiceRequest.FromString(encode_request(spans)) == wanted
    assert len(wanted.resource_spans) == 2
    assert encode_request([]) == b""


@pytest.fixture
def collector() -> Iterator[tuple[str, list[tuple[str, bytes]]]]:
    """A real HTTP server taking OTLP posts: (its traces URL, what it received)."""
    received: list[tuple[str, bytes]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append((self.headers["Content-Type"], body))
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1/traces", received
    server.shutdown()
    server.server_close()


def test_the_exporter_posts_the_wire_encoding(
    collector: tuple[str, list[tuple[str, bytes]]],
) -> None:
    """``WireSpanExporter`` posts the request over the SDK exporter's HTTP client, as
    protobuf, and fails once shut down."""
    url, received = collector
    spans = finished_spans()
    exporter: SpanExporter = WireSpanExporter(endpoint=url, timeout=5)
    assert exporter.export(spans) is SpanExportResult.SUCCESS
    [(content_type, body)] = received
    assert content_type == "application/x-protobuf"
    assert ExportTraceServiceRequest.FromString(body) == encode_spans(spans)
    exporter.shutdown()
    assert exporter.export(spans) is SpanExportResult.FAILURE
