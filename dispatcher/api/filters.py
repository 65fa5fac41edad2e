"""Query parameters of the list endpoints: each filter validated, unknown ones refused.

Filters combine with AND; a list-valued filter (``severity=critical&severity=high``)
matches any of its values. Unknown parameters are a 422, never silently ignored.
"""

import re
from datetime import UTC, datetime
from typing import Annotated, Any
from uuid import UUID

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
)

from dispatcher.db.states import AuditKind, DeliveryStatus
from dispatcher.errors import ErrorClass
from dispatcher.events.kinds import ChannelKind, Severity
from dispatcher.events.rejection import RejectReason
from dispatcher.events.schema import ENDPOINT_NAME_PATTERN
from dispatcher.outbox.dead import DeadFilter

DEFAULT_LIMIT = 50
MAX_LIMIT = 250

#: ``crisis.alert`` (exact) or ``crisis.*`` (every type under ``crisis.``).
TypeFilter = Annotated[
    str,
    StringConstraints(pattern=r"^[a-z0-9_]+(\.[a-z0-9_]+)*(\.\*)?$", max_length=200),
]
#: No NUL: PostgreSQL text cannot hold one, so it could match nothing anyway.
Text = Annotated[
    str, StringConstraints(min_length=1, max_length=200, pattern=r"^[^\x00]+$")
]


_RFC3339_START = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]")


def _rfc3339_only(value: Any) -> Any:
    # pydantic would also read "1700000000" or "0.5" as Unix time; the contract says RFC 3339.
    if not isinstance(value, str) or not _RFC3339_START.match(value):
        raise ValueError("expected an RFC 3339 timestamp with an offset")
    return value


_FIRST = datetime.min.replace(tzinfo=UTC)
_LAST = datetime.max.replace(tzinfo=UTC)


def _in_utc(value: datetime) -> datetime:
    # 0001-01-01T00:00:00+00:01 is valid RFC 3339 but before datetime.min in UTC, so the
    # driver could not send it (a 422 for a documented value); the edge bounds the same rows.
    try:
        return value.astimezone(UTC)
    except OverflowError:
        return _FIRST if value.year == _FIRST.year else _LAST


#: An RFC 3339 timestamp with an offset, e.g. ``2026-11-23T08:00:00Z``; held in UTC.
Timestamp = Annotated[
    AwareDatetime, BeforeValidator(_rfc3339_only), AfterValidator(_in_utc)
]


class Filters(BaseModel):
    """Base of every filter set."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    def active(self) -> dict[str, Any]:
        """The filters in use, for binding a cursor to them."""
        return {
            k: v
            for k, v in self.model_dump(mode="json").items()
            if k not in {"limit", "cursor"} and v not in (None, [])
        }


class Paging(BaseModel):
    limit: int = Field(
        default=DEFAULT_LIMIT, ge=1, le=MAX_LIMIT, description="Page size."
    )
    cursor: str | None = Field(
        default=None,
        max_length=2048,
        description="The `iterator` of the previous page, with the same filters.",
    )


class EventFilters(Filters):
    type: TypeFilter | None = Field(
        default=None, description="Exact type, or a prefix such as `crisis.*`."
    )
    severity: list[Severity] = Field(default_factory=list, max_length=5)
    subject_id: Text | None = None
    correlation_id: Text | None = None
    received_after: Timestamp | None = None
    received_before: Timestamp | None = None
    occurred_after: Timestamp | None = None
    occurred_before: Timestamp | None = None
    delivery_status: list[DeliveryStatus] = Field(
        default_factory=list,
        max_length=4,
        description="Only events with at least one delivery in one of these statuses.",
    )


class EventQuery(EventFilters, Paging):
    pass


class DeliveryFilters(Filters):
    channel: list[ChannelKind] = Field(default_factory=list, max_length=3)
    status: list[DeliveryStatus] = Field(default_factory=list, max_length=4)
    severity: list[Severity] = Field(default_factory=list, max_length=5)
    recipient: (
        Annotated[str, StringConstraints(min_length=1, max_length=320)] | None
    ) = Field(
        default=None,
        description="Email address or E.164 number, matched exactly through its "
        "keyed hash (needs `api.recipient_hash_key`).",
    )
    endpoint: (
        Annotated[str, StringConstraints(pattern=ENDPOINT_NAME_PATTERN)] | None
    ) = Field(default=None, description="Webhook endpoint name.")
    provider: Text | None = Field(
        default=None, description="Provider of the last attempt."
    )
    error_class: list[ErrorClass] = Field(default_factory=list, max_length=20)
    min_attempts: int | None = Field(default=None, ge=0, le=1_000_000)
    event_id: UUID | None = None
    created_after: Timestamp | None = None
    created_before: Timestamp | None = None


class DeliveryQuery(DeliveryFilters, Paging):
    pass


class RejectedFilters(Filters):
    reason: list[RejectReason] = Field(default_factory=list, max_length=40)
    received_after: Timestamp | None = None
    received_before: Timestamp | None = None


class RejectedQuery(RejectedFilters, Paging):
    pass


class AuditFilters(Filters):
    kind: list[AuditKind] = Field(default_factory=list, max_length=20)
    event_id: UUID | None = None
    delivery_id: UUID | None = None
    after: Timestamp | None = None
    before: Timestamp | None = None


class AuditQuery(AuditFilters, Paging):
    pass


class ReplayFilters(Filters):
    """Which dead letters, as ``dispatcher dlq`` selects them (one ``DeadFilter``)."""

    channel: list[ChannelKind] = Field(default_factory=list, max_length=3)
    type: TypeFilter | None = Field(
        default=None, description="Event type prefix: `crisis.` or `crisis.*`."
    )
    severity: list[Severity] = Field(default_factory=list, max_length=5)
    error_class: list[ErrorClass] = Field(default_factory=list, max_length=20)
    endpoint: list[Text] = Field(
        default_factory=list,
        max_length=5,
        description="Webhook endpoint, or the email/SMS provider that failed last.",
    )
    dead_from: Timestamp | None = Field(
        default=None, description="Dead-lettered at or after."
    )
    dead_until: Timestamp | None = Field(
        default=None, description="Dead-lettered at or before."
    )
    #: In a query string: few ids (its length is bounded); a POST body takes more.
    event_id: list[UUID] = Field(default_factory=list, max_length=10)
    delivery_id: list[UUID] = Field(default_factory=list, max_length=10)
    failures_of: UUID | None = Field(
        default=None,
        description="The deliveries this replay requeued that failed again.",
    )

    def dead_filter(self) -> DeadFilter:
        return DeadFilter(
            channels=tuple(c.value for c in self.channel),
            type_prefix=self.type,
            severities=tuple(s.value for s in self.severity),
            error_classes=tuple(e.value for e in self.error_class),
            endpoints=tuple(self.endpoint),
            dead_from=self.dead_from,
            dead_until=self.dead_until,
            event_ids=tuple(self.event_id),
            delivery_ids=tuple(self.delivery_id),
            failures_of=self.failures_of,
        )


class ReplayBodyFilters(ReplayFilters):
    """The filters of a replay to create (a JSON body: up to 100 ids of each kind)."""

    event_id: list[UUID] = Field(default_factory=list, max_length=100)
    delivery_id: list[UUID] = Field(default_factory=list, max_length=100)


#: Skip events older than this many seconds (``--max-age``): at most a year.
MAX_AGE_LIMIT = 366 * 86400


class ReplayPlanQuery(ReplayFilters):
    max_age: Annotated[float, Field(ge=0, le=MAX_AGE_LIMIT)] | None = Field(
        default=None, description="Skip events older than this many seconds."
    )
    sample: int = Field(default=10, ge=0, le=100, description="Sample size.")


class ReplayListQuery(Filters, Paging):
    """The replay list takes no filter; an unknown parameter is still refused."""
