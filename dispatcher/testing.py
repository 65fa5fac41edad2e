"""Builders the tests, the demo and the benchmark share."""

import json
import uuid
from datetime import UTC, datetime
from typing import Any

from dispatcher.channels.base import OutboundMessage
from dispatcher.events.kinds import Severity


def make_event(**overrides: Any) -> dict[str, Any]:
    """A valid v1 event as a dict; keys given as ``None`` are removed."""
    event: dict[str, Any] = {
        "schema_version": 1,
        "event_id": str(uuid.uuid4()),
        "type": "crisis.detected",
        "severity": "critical",
        "occurred_at": datetime.now(UTC).isoformat(),
        "subject": {"id": f"person-{uuid.uuid4().hex[:8]}"},
        "data": {"score": 0.97, "signal": "self-harm-language", "source": "chat"},
        "recipients": [],
    }
    event.update(overrides)
    return {k: v for k, v in event.items() if v is not None}


def event_bytes(**overrides: Any) -> bytes:
    """``make_event`` serialised as the publisher would send it."""
    return json.dumps(make_event(**overrides)).encode()


def make_message(**overrides: Any) -> OutboundMessage:
    """An adapter-facing message for one delivery, as the worker would build it."""
    values: dict[str, Any] = {
        "delivery_id": uuid.uuid4(),
        "event_id": uuid.uuid4(),
        "event_type": "crisis.detected",
        "severity": Severity.CRITICAL,
        "occurred_at": "2025-03-01T12:00:00+00:00",
        "subject_id": "person-42",
        "recipient": "crisis-team@example.org",
        "data": {"score": 0.97},
    }
    values.update(overrides)
    return OutboundMessage(**values)
