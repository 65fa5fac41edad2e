"""What the API returns: response models, built from rows with PII masked unless allowed."""

import base64
from datetime import datetime
from functools import cache
from typing import Any, TypeVar
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

from dispatcher.api.masking import mask_data, mask_recipient, mask_subject

_OUT = ConfigDict(frozen=True)
M = TypeVar("M", bound=BaseModel)


@cache
def _field_names(model: type[BaseModel]) -> tuple[str, ...]:
    return tuple(model.model_fields)


def _from_row(model: type[M], row: Any, **given: Any) -> M:
    """``model`` with the fields in ``given`` and every other field read from ``row``'s
    attribute of the same name (a result row, or an object such as a replay plan)."""
    read = {n: getattr(row, n) for n in _field_names(model) if n not in given}
    return model(**read, **given)


class EventSummary(BaseModel):
    model_config = _OUT

    event_id: UUID
    type: str
    severity: str
    occurred_at: datetime
    received_at: datetime
    subject_id: str = Field(description="Masked without `audit:read-pii`.")
    correlation_id: str | None
    delivery_count: int


class Attempt(BaseModel):
    """One try of one delivery."""

    model_config = _OUT

    attempt: int
    provider: str | None
    started_at: datetime
    finished_at: datetime
    outcome: str
    error_class: str | None
    provider_code: str | None
    latency_ms: float | None
    error_message: str | None = Field(
        description="The provider's words; null without `audit:read-pii` (they may "
        "quote the address)."
    )


class Delivery(BaseModel):
    model_config = _OUT

    delivery_id: UUID
    event_id: UUID
    channel: str
    recipient: str = Field(description="Masked without `audit:read-pii`.")
    rule: str | None
    status: str
    priority: int
    attempts: int
    next_attempt_at: datetime
    created_at: datetime
    updated_at: datetime
    delivered_at: datetime | None
    dead_at: datetime | None
    last_error_class: str | None
    last_provider: str | None
    last_error_message: str | None = Field(description="Null without `audit:read-pii`.")


class DeliveryDetail(Delivery):
    timeline: list[Attempt] = Field(description="Attempts, oldest first.")


class AuditItem(BaseModel):
    model_config = _OUT

    id: int
    at: datetime
    kind: str
    event_id: UUID | None
    delivery_id: UUID | None
    detail: dict[str, Any]


class EventDetail(EventSummary):
    subject: dict[str, Any] = Field(description="Values masked without the PII scope.")
    data: dict[str, Any] = Field(description="Values masked without the PII scope.")
    traceparent: str | None
    deliveries: list[DeliveryDetail]
    audit: list[AuditItem] = Field(
        description="Audit entries of the event, oldest first."
    )


class Rejected(BaseModel):
    model_config = _OUT

    id: int
    received_at: datetime
    source: str
    reason: str
    message: str
    body_size: int
    routing_key: str | None
    message_id: str | None


class RejectedDetail(Rejected):
    body_base64: str | None = Field(
        description="The stored body (cut at the size limit); null without the PII scope."
    )
    headers: dict[str, Any] | None = Field(description="Null without the PII scope.")


class Count(BaseModel):
    count: int
    approximated: bool = Field(
        description="True when the count is the planner's estimate (above the exact limit)."
    )


def event_summary(row: Any, pii: bool) -> EventSummary:
    return _from_row(
        EventSummary,
        row,
        event_id=row.id,
        subject_id=row.subject_id if pii else mask_subject(row.subject_id),
    )


def event_detail(
    row: Any,
    deliveries: list[DeliveryDetail],
    audit: list[AuditItem],
    pii: bool,
) -> EventDetail:
    payload: dict[str, Any] = row.payload
    subject = dict(payload.get("subject") or {})
    data = dict(payload.get("data") or {})
    if not pii:
        subject = {
            k: mask_subject(str(v)) if k == "id" else mask_data(v)
            for k, v in subject.items()
        }
        data = mask_data(data)
    return EventDetail(
        **event_summary(row, pii).model_dump(),
        subject=subject,
        data=data,
        traceparent=row.traceparent,
        deliveries=deliveries,
        audit=audit,
    )


def attempt(row: Any, pii: bool) -> Attempt:
    return _from_row(Attempt, row, error_message=row.error_message if pii else None)


def _delivery_masked(row: Any, pii: bool) -> dict[str, Any]:
    return {
        "delivery_id": row.id,
        "recipient": row.recipient
        if pii
        else mask_recipient(row.channel, row.recipient),
        "last_error_message": row.last_error_message if pii else None,
    }


def delivery(row: Any, pii: bool) -> Delivery:
    return _from_row(Delivery, row, **_delivery_masked(row, pii))


def delivery_detail(row: Any, timeline: list[Attempt], pii: bool) -> DeliveryDetail:
    return _from_row(
        DeliveryDetail, row, timeline=timeline, **_delivery_masked(row, pii)
    )


def audit_item(row: Any) -> AuditItem:
    return _from_row(AuditItem, row)


def rejected(row: Any) -> Rejected:
    return _from_row(Rejected, row)


def rejected_detail(row: Any, pii: bool) -> RejectedDetail:
    return _from_row(
        RejectedDetail,
        row,
        body_base64=base64.b64encode(row.body).decode() if pii else None,
        headers=row.headers if pii else None,
    )


class PlanSample(BaseModel):
    """One dead letter of a replay plan."""

    model_config = _OUT

    delivery_id: UUID
    event_id: UUID
    channel: str
    recipient: str = Field(description="Masked without `audit:read-pii`.")
    endpoint: str | None
    error_class: str | None
    attempts: int
    dead_at: datetime
    type: str
    severity: str


class ReplayPlan(BaseModel):
    """What a replay with these filters would do now: counts, groups, skips, a sample."""

    model_config = _OUT

    as_of: datetime
    count: int = Field(description="Dead letters the filters select.")
    to_requeue: int = Field(description="Of those, what a replay would requeue.")
    by_channel: dict[str, int]
    by_error_class: dict[str, int]
    by_endpoint: dict[str, int]
    skips: dict[str, int] = Field(description="Would be skipped, by reason.")
    in_other_replay: int = Field(description="Already waiting in another replay.")
    warnings: list[str]
    sample: list[PlanSample]


class Replay(BaseModel):
    """A replay job and its counters."""

    model_config = _OUT

    replay_id: UUID
    created_at: datetime
    created_by: str = Field(description="Token name or OS user.")
    reason: str
    filters: dict[str, Any]
    status: str = Field(description="planned, running, paused, done or cancelled.")
    total: int
    requeued: int
    delivered: int
    failed_again: int
    skipped: int
    pending: int = Field(description="Requeued, no outcome yet.")
    rate: float = Field(description="Requeued per second; 0: unthrottled.")
    max_age_seconds: float | None
    finished_at: datetime | None
    updated_at: datetime
    runner: str | None = Field(description="The replica holding it, if any.")


def plan_sample(row: Any) -> PlanSample:
    return _from_row(PlanSample, row, delivery_id=row.id)


def replay_plan(plan: Any) -> ReplayPlan:
    return _from_row(
        ReplayPlan,
        plan,
        warnings=plan.warnings(),
        sample=[plan_sample(s) for s in plan.sample],
    )


def replay(row: Any) -> Replay:
    return _from_row(Replay, row, replay_id=row.id, runner=row.lease_owner)
