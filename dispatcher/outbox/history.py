"""One delivery's story, for ``dispatcher dlq show``: its event, every attempt (initial,
retry, replay) and the replays that took it up. Read only."""

from dataclasses import dataclass, field
from datetime import datetime
from uuid import UUID

from dispatcher.api.masking import mask_recipient, mask_subject
from dispatcher.db.sql import Executor, Statement, from_row

_DELIVERY = Statement.compile(
    """
    SELECT d.id, d.event_id, d.channel, d.recipient, d.rule, d.status, d.priority,
           d.attempts, d.last_error_class AS error_class,
           d.last_error_message AS error_message, d.last_provider AS provider,
           d.created_at, d.dead_at, d.delivered_at, d.replay_id,
           e.type, e.severity, e.occurred_at, e.subject_id, e.correlation_id
    FROM deliveries AS d JOIN events AS e ON e.id = d.event_id
    WHERE d.id = :id
    """
)

_ATTEMPTS = Statement.compile(
    """
    SELECT attempt, started_at, finished_at, outcome, provider, error_class,
           error_message, provider_code, latency_ms, lineage, replay_id
    FROM delivery_attempts WHERE delivery_id = :id ORDER BY attempt, id
    """
)

_REPLAYS = Statement.compile(
    """
    SELECT i.replay_id, i.state, i.reason AS skip_reason, i.decided_at, r.created_at,
           r.created_by, r.reason, r.status
    FROM replay_items AS i JOIN replays AS r ON r.id = i.replay_id
    WHERE i.delivery_id = :id ORDER BY r.created_at, r.id
    """
)


@dataclass(frozen=True, slots=True)
class AttemptRow:
    """One try: ``lineage`` says how it came about (initial, retry, replay)."""

    attempt: int
    started_at: datetime
    finished_at: datetime
    outcome: str
    provider: str | None
    error_class: str | None
    #: The provider's words, which may quote the address: None unless unmasked.
    error_message: str | None
    provider_code: str | None
    latency_ms: float | None
    lineage: str
    replay_id: UUID | None


@dataclass(frozen=True, slots=True)
class ReplayLink:
    """A replay that froze this delivery, and what it did with it."""

    replay_id: UUID
    state: str
    skip_reason: str | None
    decided_at: datetime | None
    created_at: datetime
    created_by: str
    reason: str
    status: str


@dataclass(frozen=True, slots=True)
class DeliveryHistory:
    """A delivery with its event summary (never the payload), attempts and replays."""

    id: UUID
    event_id: UUID
    channel: str
    #: Masked unless asked for.
    recipient: str
    rule: str | None
    status: str
    priority: int
    attempts: int
    error_class: str | None
    error_message: str | None
    provider: str | None
    created_at: datetime
    dead_at: datetime | None
    delivered_at: datetime | None
    #: The replay that last requeued it.
    replay_id: UUID | None
    type: str
    severity: str
    occurred_at: datetime
    #: Masked unless asked for.
    subject_id: str
    correlation_id: str | None
    timeline: list[AttemptRow] = field(default_factory=list)
    replays: list[ReplayLink] = field(default_factory=list)


async def delivery_history(
    conn: Executor, delivery_id: UUID, *, masked: bool = True
) -> DeliveryHistory | None:
    """The story of one delivery; None if there is no such delivery. Masked, the
    recipient and subject are shown masked and the providers' messages are left out."""
    rows = await _DELIVERY.fetch(conn, id=delivery_id)
    if not rows:
        return None
    row = dict(rows[0])
    attempts = [dict(a) for a in await _ATTEMPTS.fetch(conn, id=delivery_id)]
    if masked:
        row["recipient"] = mask_recipient(row["channel"], row["recipient"])
        row["subject_id"] = mask_subject(row["subject_id"])
        row["error_message"] = None
        for a in attempts:
            a["error_message"] = None
    history = from_row(DeliveryHistory, row)
    history.timeline.extend(from_row(AttemptRow, a) for a in attempts)
    history.replays.extend(
        from_row(ReplayLink, r) for r in await _REPLAYS.fetch(conn, id=delivery_id)
    )
    return history
