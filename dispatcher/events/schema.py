"""Event contract v1: the JSON envelope publishers put on the exchange.

The JSON Schema in ``dispatcher/events/event-v1.schema.json`` is generated from these models
(``dispatcher schema``) and committed; a test keeps the two in agreement.
"""

import re
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationInfo,
    field_validator,
)
from pydantic_core import PydanticCustomError

from dispatcher.events.address import InvalidEmailError, normalize_email
from dispatcher.events.kinds import ChannelKind, Severity

SCHEMA_VERSION = 1
TYPE_PATTERN = r"^[a-z0-9_]+(\.[a-z0-9_]+)*$"
E164_PATTERN = r"^\+[1-9][0-9]{1,14}$"
ENDPOINT_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
_E164 = re.compile(E164_PATTERN)
_ENDPOINT = re.compile(ENDPOINT_NAME_PATTERN)

EventType = Annotated[str, StringConstraints(pattern=TYPE_PATTERN, max_length=200)]
ShortText = Annotated[str, StringConstraints(min_length=1, max_length=200)]


class InvalidRecipientError(ValueError):
    """A recipient address that its channel cannot use."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def check_recipient(channel: ChannelKind, to: str) -> str:
    """Validate and normalise one address for its channel; pure, no DNS.

    Raises:
        InvalidRecipientError: with ``code`` ``invalid_email``, ``invalid_phone`` or
            ``invalid_endpoint_name``; the message never repeats the address.
    """
    if channel is ChannelKind.EMAIL:
        try:
            return normalize_email(to)
        except InvalidEmailError as exc:
            raise InvalidRecipientError("invalid_email", str(exc)) from None
    if channel is ChannelKind.SMS:
        if not _E164.fullmatch(to):
            raise InvalidRecipientError("invalid_phone", "not an E.164 phone number")
        return to
    if not _ENDPOINT.fullmatch(to):
        raise InvalidRecipientError(
            "invalid_endpoint_name", "not a webhook endpoint name"
        )
    return to


class Recipient(BaseModel):
    """One explicit recipient: a channel and an address, number or endpoint name."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    channel: ChannelKind
    to: Annotated[str, StringConstraints(min_length=1, max_length=320)] = Field(
        description="Email address, E.164 number (+15551234567) or webhook endpoint name."
    )

    @field_validator("to")
    @classmethod
    def _valid_for_channel(cls, to: str, info: ValidationInfo) -> str:
        channel = info.data.get("channel")
        if channel is None:  # the channel itself was invalid and is reported as such
            return to
        try:
            return check_recipient(channel, to)
        except InvalidRecipientError as exc:
            raise PydanticCustomError(exc.code, str(exc)) from None


class Subject(BaseModel):
    """Whom the event is about; ``id`` is required, other keys are kept as sent."""

    model_config = ConfigDict(frozen=True, extra="allow")

    id: ShortText


class EventV1(BaseModel):
    """Version 1 of the event envelope."""

    model_config = ConfigDict(
        frozen=True,
        extra="forbid",
        title="Dispatcher event v1",
        json_schema_extra={"$id": "https://dispatcher.dev/schemas/event-v1.json"},
    )

    schema_version: Literal[1]
    event_id: UUID = Field(description="Idempotency key: republishing is safe.")
    type: EventType = Field(description="Dotted lowercase name, also the routing key.")
    severity: Severity
    occurred_at: AwareDatetime = Field(description="RFC 3339 with an offset.")
    subject: Subject
    data: dict[str, Any] = Field(default_factory=dict)
    recipients: list[Recipient] = Field(default_factory=list, max_length=100)
    correlation_id: ShortText | None = None


def event_json_schema() -> dict[str, Any]:
    """The JSON Schema of ``EventV1`` as committed in ``events/event-v1.schema.json``."""
    return EventV1.model_json_schema()
