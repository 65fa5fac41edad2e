"""OTLP trace export requests written straight to protobuf wire format.

The SDK's encoder (``opentelemetry.exporter.otlp.proto.common``) builds a protobuf object
per span, attribute, event and link and then serialises the tree; in a drain that was the
larger half of what tracing costs (docs/benchmarks.md). This writes the same bytes
directly: attribute keys and the fixed fields are encoded once and reused, each value is
a few byte appends. ``tests/unit/test_otlp_wire.py`` checks that the SDK's protobuf
classes parse every request back to exactly what the SDK's encoder builds, for every
attribute type OTLP has.

Field numbers: opentelemetry-proto ``trace/v1/trace.proto``, ``common/v1/common.proto``,
``resource/v1/resource.proto``, ``collector/trace/v1/trace_service.proto``.
"""

import functools
import struct
from collections.abc import Mapping, Sequence

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind

_LEN, _I64, _I32 = 2, 1, 5
#: ``SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK`` and ``..._IS_REMOTE_MASK`` (trace.proto).
_HAS_IS_REMOTE, _IS_REMOTE = 0x100, 0x200
_KIND = {
    SpanKind.INTERNAL: 1,
    SpanKind.SERVER: 2,
    SpanKind.CLIENT: 3,
    SpanKind.PRODUCER: 4,
    SpanKind.CONSUMER: 5,
}
_U64 = (1 << 64) - 1
_LOW7 = 0x7F
_FIXED64 = struct.Struct("<Q").pack
_FIXED32 = struct.Struct("<I").pack
_DOUBLE = struct.Struct("<d").pack


def _slow_varint(value: int) -> bytes:
    value &= _U64
    out = bytearray()
    while value > _LOW7:
        out.append((value & _LOW7) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


#: Varints of the lengths and counts that fit two bytes: nearly all of them.
_SMALL = tuple(_slow_varint(n) for n in range(1 << 14))


def _varint(value: int) -> bytes:
    return _SMALL[value] if 0 <= value < 1 << 14 else _slow_varint(value)


@functools.cache
def _tag(field: int, wire: int) -> bytes:
    return _varint(field << 3 | wire)


#: Tags of the length-delimited fields 1..16.
_LEN_TAG = tuple(_slow_varint(f << 3 | _LEN) for f in range(17))


def _field(field: int, payload: bytes) -> bytes:
    """A length-delimited field."""
    n = len(payload)
    return _LEN_TAG[field] + (_SMALL[n] if n < 1 << 14 else _slow_varint(n)) + payload


@functools.lru_cache(maxsize=1024)
def _key(key: str) -> bytes:
    """``KeyValue.key`` (field 1), encoded once per distinct key."""
    return _field(1, key.encode())


def _value(value: object) -> bytes | None:
    """The body of an ``AnyValue``; None for a type OTLP has no value for."""
    if value is None:
        return b""
    if isinstance(value, bool):
        return _tag(2, 0) + (b"\x01" if value else b"\x00")
    if isinstance(value, str):
        return _field(1, value.encode())
    if isinstance(value, int):
        return _tag(3, 0) + _varint(value)
    if isinstance(value, float):
        return _tag(4, _I64) + _DOUBLE(value)
    if isinstance(value, bytes):
        return _field(7, value)
    if isinstance(value, Sequence):
        items = [_value(v) for v in value]
        return _field(5, b"".join(_field(1, v) for v in items if v is not None))
    if isinstance(value, Mapping):
        return _field(6, _attributes(1, {str(k): v for k, v in value.items()}))
    return None


def _attributes(field: int, attributes: Mapping[str, object] | None) -> bytes:
    """Repeated ``KeyValue`` ``field`` of the enclosing message (a value OTLP cannot
    carry is left out, as the SDK's encoder leaves it out)."""
    if not attributes:
        return b""
    out = []
    for key, value in attributes.items():
        if type(value) is str:  # the common case, inlined
            text = value.encode()
            encoded = _LEN_TAG[1] + _varint(len(text)) + text
        elif (encoded_value := _value(value)) is not None:
            encoded = encoded_value
        else:
            continue
        pair = _key(key) + _LEN_TAG[2] + _varint(len(encoded)) + encoded
        out.append(_field(field, pair))
    return b"".join(out)


def _flags(field: int, context: SpanContext | None) -> bytes:
    """``flags`` of a span (field 16, its parent's context) or a link (field 6)."""
    flags = _HAS_IS_REMOTE | (_IS_REMOTE if context and context.is_remote else 0)
    return _tag(field, _I32) + _FIXED32(flags)


def _trace_state(field: int, context: SpanContext) -> bytes:
    state = context.trace_state
    if not state:
        return b""
    return _field(field, ",".join(f"{k}={v}" for k, v in state.items()).encode())


def _count(field: int, count: int) -> bytes:
    return _tag(field, 0) + _varint(count) if count else b""


def _events(span: ReadableSpan) -> list[bytes]:
    out = []
    for event in span.events:
        body = (
            _tag(1, _I64) + _FIXED64(event.timestamp) + _field(2, event.name.encode())
        )
        body += _attributes(3, event.attributes) + _count(4, event.dropped_attributes)
        out.append(_field(11, body))
    return out


def _links(span: ReadableSpan) -> list[bytes]:
    out = []
    for link in span.links:
        linked = link.context
        body = _field(1, linked.trace_id.to_bytes(16, "big")) + _field(
            2, linked.span_id.to_bytes(8, "big")
        )
        body += _attributes(4, link.attributes) + _count(5, link.dropped_attributes)
        out.append(_field(13, body + _flags(6, linked)))
    return out


def _status(span: ReadableSpan) -> bytes:
    status = span.status
    body = _field(2, status.description.encode()) if status.description else b""
    return _field(15, body + _count(3, status.status_code.value))


def _span(span: ReadableSpan) -> bytes:
    context = span.get_span_context()
    assert context is not None  # noqa: S101 - a finished SDK span always has one
    parent = span.parent
    parts = [
        _field(1, context.trace_id.to_bytes(16, "big")),
        _field(2, context.span_id.to_bytes(8, "big")),
        _trace_state(3, context),
        _field(4, parent.span_id.to_bytes(8, "big")) if parent is not None else b"",
        _field(5, span.name.encode()),
        _tag(6, 0) + _varint(_KIND[span.kind]),
        _tag(7, _I64) + _FIXED64(span.start_time or 0),
        _tag(8, _I64) + _FIXED64(span.end_time or 0),
        _attributes(9, span.attributes),
        _count(10, span.dropped_attributes),
        *_events(span),
        _count(12, span.dropped_events),
        *_links(span),
        _count(14, span.dropped_links),
        _status(span),
        _flags(16, parent),
    ]
    return b"".join(parts)


def _scope(scope: InstrumentationScope | None) -> bytes:
    if scope is None:
        return b""
    body = _field(1, scope.name.encode())
    if scope.version:
        body += _field(2, scope.version.encode())
    body += _attributes(3, scope.attributes)
    return _field(1, body)


def encode_request(spans: Sequence[ReadableSpan]) -> bytes:
    """A serialised ``ExportTraceServiceRequest`` holding ``spans``, grouped by resource
    and instrumentation scope as the SDK groups them."""
    groups: dict[Resource, dict[InstrumentationScope | None, list[bytes]]] = {}
    for span in spans:
        by_scope = groups.setdefault(span.resource, {})
        by_scope.setdefault(span.instrumentation_scope or None, []).append(
            _field(2, _span(span))
        )
    out = []
    for resource, by_scope in groups.items():
        body = _field(1, _attributes(1, resource.attributes))
        for scope, encoded in by_scope.items():
            scope_body = _scope(scope) + b"".join(encoded)
            if scope is not None and scope.schema_url:
                scope_body += _field(3, scope.schema_url.encode())
            body += _field(2, scope_body)
        if resource.schema_url:
            body += _field(3, resource.schema_url.encode())
        out.append(_field(1, body))
    return b"".join(out)


class WireSpanExporter(OTLPSpanExporter):
    """The SDK's OTLP/HTTP protobuf exporter (endpoint, headers, timeout, compression and
    retries from ``OTEL_EXPORTER_OTLP_*`` as before), encoding with ``encode_request``.

    Overrides ``export`` only; it uses the SDK exporter's HTTP client, which is internal
    (``_client``): opentelemetry-exporter-otlp-proto-http is pinned, and the unit test
    exports to a real HTTP server.
    """

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self._shutdown:
            return SpanExportResult.FAILURE
        data = encode_request(spans)
        if len(data) > self._max_request_size:
            return SpanExportResult.FAILURE
        if not self._client.export(data).success:
            return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS
