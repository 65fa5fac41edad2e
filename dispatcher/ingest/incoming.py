"""One consumed broker message, parsed and routed, on its way into a batch."""

import base64
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any

from dispatcher.events.parse import ParsedEvent
from dispatcher.events.rejection import Rejection
from dispatcher.events.routing import Route
from dispatcher.telemetry.metrics import PUBLISHED_AT_HEADER

#: Stored header values are cut at this many characters.
_MAX_HEADER_TEXT = 1024
_MAX_TRACEPARENT = 128
_MAX_TRACESTATE = 512
_MAX_HEADER_DEPTH = 8


class Source(StrEnum):
    """Which queue a message came from."""

    #: The ingest queue bound to the notifications exchange.
    INGEST = "ingest"
    #: The ingest dead-letter queue (the broker gave up on the message).
    INGEST_DLQ = "ingest_dlq"
    #: A stored rejected message read again by ``dispatcher rejected replay``.
    REJECTED_REPLAY = "rejected_replay"


@dataclass(frozen=True, slots=True)
class Accepted:
    """A valid event and the deliveries it causes."""

    parsed: ParsedEvent
    routes: list[Route]


@dataclass(slots=True, kw_only=True)
class Incoming:
    """What the batch writer needs of one message."""

    body: bytes
    outcome: Accepted | Rejection
    source: Source = Source.INGEST
    routing_key: str | None = None
    message_id: str | None = None
    headers: Mapping[str, Any] = field(default_factory=dict)

    @property
    def traceparent(self) -> str | None:
        value = self.headers.get("traceparent")
        return (
            value if isinstance(value, str) and len(value) <= _MAX_TRACEPARENT else None
        )

    @property
    def tracestate(self) -> str | None:
        value = self.headers.get("tracestate")
        return (
            value if isinstance(value, str) and len(value) <= _MAX_TRACESTATE else None
        )

    @property
    def published_at(self) -> float | None:
        """When the publisher published it (epoch seconds, ``x-published-at``), if said."""
        value = self.headers.get(PUBLISHED_AT_HEADER)
        if isinstance(value, (str, bytes, int, float)):
            try:
                published = float(value)
            except ValueError:
                return None
            return published if math.isfinite(published) else None
        return None

    def headers_json(self) -> str:
        """The AMQP headers as JSON; bytes become base64 and long text is cut."""
        return json.dumps(_jsonable(dict(self.headers)), ensure_ascii=False)


def _jsonable(value: Any, depth: int = 0) -> Any:
    if depth > _MAX_HEADER_DEPTH:
        return "<nested too deeply>"
    if isinstance(value, Mapping):
        return {str(k)[:256]: _jsonable(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v, depth + 1) for v in value[:100]]
    if isinstance(value, bytes):
        return {"base64": base64.b64encode(value[:_MAX_HEADER_TEXT]).decode()}
    if isinstance(value, str):
        return value[:_MAX_HEADER_TEXT].replace("\x00", "\ufffd")
    if isinstance(value, (bool, int)) or value is None:
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    return str(value)[:_MAX_HEADER_TEXT]
