"""The seam between the delivery worker and one provider of one channel."""

from dataclasses import dataclass, field
from typing import Any, Protocol
from uuid import UUID

from dispatcher.events.kinds import ChannelKind, Severity


@dataclass(frozen=True, slots=True, kw_only=True)
class OutboundMessage:
    """Everything an adapter needs to send one delivery; built by the worker per attempt."""

    delivery_id: UUID
    event_id: UUID
    event_type: str
    severity: Severity
    occurred_at: str
    subject_id: str
    #: Email address, E.164 number, or webhook endpoint name.
    recipient: str
    #: The event's ``data`` object and its envelope, for templates and webhook bodies.
    data: dict[str, Any] = field(default_factory=dict)
    correlation_id: str | None = None
    #: 1 for the first attempt.
    attempt: int = 1
    #: Stable across retries of the same delivery: receivers de-duplicate on it.
    idempotency_key: str = ""
    traceparent: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class SendReceipt:
    """What the provider said when it accepted the message."""

    provider: str
    #: HTTP status, SMTP reply code or Twilio status, as text.
    provider_code: str | None = None
    #: The provider's id for the message (Twilio SID, SMTP queue id), when it gives one.
    provider_message_id: str | None = None


class Channel(Protocol):
    """One provider of one channel: an SMTP relay, a Twilio account, a webhook endpoint set.

    ``send`` does I/O and classification only: it raises ``TransientDeliveryError`` or
    ``PermanentDeliveryError`` (built by ``channels/classify.py``) and never retries, sleeps,
    logs a payload or touches the database.
    """

    kind: ChannelKind
    name: str
    #: ``None``: the worker's ``deadline_seconds`` bounds the whole ``send``. An adapter
    #: that bounds phases of its own (email: waiting for a pooled connection, sending,
    #: the reply to the final dot) gives the longest its ``send`` can take.
    time_limit: float | None

    async def send(self, message: OutboundMessage, /) -> SendReceipt: ...

    async def aclose(self) -> None: ...
