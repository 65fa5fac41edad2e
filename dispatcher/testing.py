"""Builders the tests, the demo and the benchmark share."""

import json
import uuid
from datetime import UTC, datetime
from typing import Any


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
