"""Every SQL statement of delivery: claim with a lease, record outcomes, status queries.

A claim is a lease: ``status = in_flight`` and ``next_attempt_at`` = lease expiry, so a row
whose worker died becomes claimable again by the same query. Each claim draws a new
``lease_token``; outcomes are applied only where the token still matches (fencing), so a
late result from an expired claim cannot overwrite the newer one.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from dispatcher.db.models import DeliveryStatus

#: How many due rows a capped claim looks at per row it may take.
_SCAN_FACTOR = 4

_CLAIM = text(
    """
    WITH locked AS (
        SELECT id, recipient, priority, next_attempt_at FROM deliveries
        WHERE channel = :channel
          AND status IN ('pending', 'in_flight')
          AND next_attempt_at <= now()
          AND priority <= :max_priority
          AND NOT (recipient = ANY(CAST(:blocked AS text[])))
        ORDER BY priority, next_attempt_at
        LIMIT :scan
        FOR UPDATE SKIP LOCKED
    ), ranked AS (
        SELECT l.id, l.priority, l.next_attempt_at,
               row_number() OVER (PARTITION BY l.recipient
                                  ORDER BY l.priority, l.next_attempt_at) AS n,
               coalesce(room.free, :per_recipient) AS free
        FROM locked AS l
        LEFT JOIN unnest(CAST(:room_recipients AS text[]), CAST(:room_free AS integer[]))
             AS room(recipient, free) ON room.recipient = l.recipient
    ), due AS (
        SELECT id FROM ranked WHERE n <= free
        ORDER BY priority, next_attempt_at
        LIMIT :limit
    )
    UPDATE deliveries AS d
    SET status = 'in_flight', attempts = d.attempts + 1, lease_token = gen_random_uuid(),
        lease_owner = :owner, next_attempt_at = now() + make_interval(secs => :lease),
        updated_at = now()
    FROM due, events AS e
    WHERE d.id = due.id AND e.id = d.event_id
    RETURNING d.id, d.event_id, d.recipient, d.attempts, d.lease_token, d.priority,
              d.created_at, d.traceparent, e.payload
    """
)

_COMPLETE = text(
    """
    WITH r AS (
        SELECT * FROM unnest(CAST(:ids AS uuid[]), CAST(:tokens AS uuid[]),
                             CAST(:statuses AS text[]), CAST(:next_at AS timestamptz[]),
                             CAST(:error_classes AS text[]), CAST(:error_messages AS text[]),
                             CAST(:providers AS text[]), CAST(:refunds AS integer[]),
                             CAST(:dead_reasons AS text[]))
             AS r(id, token, status, next_at, error_class, error_message, provider, refund,
                  dead_reason)
    ), applied AS (
        UPDATE deliveries AS d
        SET status = r.status,
            next_attempt_at = coalesce(r.next_at, d.next_attempt_at),
            attempts = d.attempts - r.refund,
            lease_token = NULL, lease_owner = NULL,
            last_error_class = coalesce(r.error_class, d.last_error_class),
            last_error_message = coalesce(r.error_message, d.last_error_message),
            last_provider = coalesce(r.provider, d.last_provider),
            delivered_at = CASE WHEN r.status = 'delivered' THEN now() ELSE d.delivered_at END,
            dead_at = CASE WHEN r.status = 'dead' THEN now() ELSE d.dead_at END,
            updated_at = now()
        FROM r
        WHERE d.id = r.id AND d.lease_token = r.token
        RETURNING d.id, d.event_id, d.channel, d.status, d.attempts, d.last_error_class,
                  d.last_error_message, r.dead_reason
    ), attempts AS (
        INSERT INTO delivery_attempts (delivery_id, attempt, provider, started_at, finished_at,
                                       outcome, error_class, error_message, provider_code,
                                       latency_ms)
        SELECT * FROM unnest(CAST(:a_ids AS uuid[]), CAST(:a_attempts AS integer[]),
                             CAST(:a_providers AS text[]), CAST(:a_started AS timestamptz[]),
                             CAST(:a_finished AS timestamptz[]), CAST(:a_outcomes AS text[]),
                             CAST(:a_error_classes AS text[]), CAST(:a_error_messages AS text[]),
                             CAST(:a_codes AS text[]), CAST(:a_latencies AS float8[]))
    ), audit AS (
        INSERT INTO audit_log (kind, event_id, delivery_id, detail)
        SELECT 'delivery.dead_lettered', event_id, id,
               jsonb_build_object('channel', channel, 'attempts', attempts,
                                  'error_class', last_error_class, 'reason', dead_reason)
        FROM applied WHERE status = 'dead'
        UNION ALL
        SELECT x.kind, NULL, NULL, x.detail::jsonb
        FROM unnest(CAST(:x_kinds AS text[]), CAST(:x_details AS text[])) AS x(kind, detail)
    )
    SELECT id, event_id, channel, status, attempts, last_error_class, last_error_message,
           dead_reason
    FROM applied
    """
)


@dataclass(frozen=True, slots=True)
class Claimed:
    """A delivery this worker holds a lease on."""

    id: UUID
    event_id: UUID
    recipient: str
    #: Attempts including this one.
    attempts: int
    lease_token: UUID
    priority: int
    created_at: datetime
    traceparent: str | None
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    """One try against one provider."""

    attempt: int
    provider: str | None
    started_at: datetime
    finished_at: datetime
    #: delivered | failed
    outcome: str
    error_class: str | None = None
    error_message: str | None = None
    provider_code: str | None = None
    latency_ms: float | None = None


@dataclass(frozen=True, slots=True)
class Outcome:
    """The new state of one claimed delivery and the attempts that led to it."""

    delivery_id: UUID
    lease_token: UUID
    status: DeliveryStatus
    next_attempt_at: datetime | None = None
    error_class: str | None = None
    error_message: str | None = None
    provider: str | None = None
    #: 1 when no attempt was made (every provider's breaker open): the claim is refunded.
    refund: int = 0
    attempts: tuple[AttemptRecord, ...] = ()
    #: Why it was dead-lettered (``DeadLetterReason``), for the audit entry.
    dead_reason: str | None = None


@dataclass(frozen=True, slots=True)
class DeadLettered:
    """A delivery that became dead in this batch (fencing passed)."""

    id: UUID
    event_id: UUID
    channel: str
    attempts: int
    error_class: str | None
    error_message: str | None
    reason: str | None = None


@dataclass(slots=True)
class AuditNote:
    """An audit entry not tied to an event (breaker transitions)."""

    kind: str
    #: JSON text: ids, names and codes only.
    detail: str = "{}"


async def claim(
    conn: AsyncConnection,
    channel: str,
    *,
    limit: int,
    lease_seconds: float,
    owner: str,
    blocked: Sequence[str] = (),
    max_priority: int = 4,
    per_recipient: int | None = None,
    room: Mapping[str, int] | None = None,
) -> list[Claimed]:
    """Lease up to ``limit`` due deliveries of one channel, most urgent first.

    ``blocked`` recipients are skipped. With ``per_recipient``, at most that many rows of
    one recipient are taken, or ``room[recipient]`` for those that already have some in
    flight: a backlog for one endpoint is never claimed beyond what may be sent at once.
    The rows looked at for that are a few times ``limit`` (locked only until commit).
    """
    room = room or {}
    capped = per_recipient is not None
    rows = await conn.execute(
        _CLAIM,
        {
            "channel": channel,
            "limit": limit,
            "scan": limit * _SCAN_FACTOR if capped else limit,
            "per_recipient": per_recipient if capped else limit,
            "room_recipients": list(room),
            "room_free": list(room.values()),
            "lease": lease_seconds,
            "owner": owner,
            "blocked": list(blocked),
            "max_priority": max_priority,
        },
    )
    return [Claimed(*row) for row in rows]


async def complete(
    conn: AsyncConnection, outcomes: Sequence[Outcome], notes: Sequence[AuditNote] = ()
) -> list[DeadLettered]:
    """Apply outcomes (fenced by lease token), record every attempt, audit dead letters."""
    attempts = [(o.delivery_id, a) for o in outcomes for a in o.attempts]
    params: dict[str, Any] = {
        "ids": [o.delivery_id for o in outcomes],
        "tokens": [o.lease_token for o in outcomes],
        "statuses": [o.status.value for o in outcomes],
        "next_at": [o.next_attempt_at for o in outcomes],
        "error_classes": [o.error_class for o in outcomes],
        "error_messages": [o.error_message for o in outcomes],
        "providers": [o.provider for o in outcomes],
        "refunds": [o.refund for o in outcomes],
        "dead_reasons": [o.dead_reason for o in outcomes],
        "a_ids": [d for d, _ in attempts],
        "a_attempts": [a.attempt for _, a in attempts],
        "a_providers": [a.provider for _, a in attempts],
        "a_started": [a.started_at for _, a in attempts],
        "a_finished": [a.finished_at for _, a in attempts],
        "a_outcomes": [a.outcome for _, a in attempts],
        "a_error_classes": [a.error_class for _, a in attempts],
        "a_error_messages": [a.error_message for _, a in attempts],
        "a_codes": [a.provider_code for _, a in attempts],
        "a_latencies": [a.latency_ms for _, a in attempts],
        "x_kinds": [n.kind for n in notes],
        "x_details": [n.detail for n in notes],
    }
    rows = await conn.execute(_COMPLETE, params)
    return [
        DeadLettered(
            r.id,
            r.event_id,
            r.channel,
            r.attempts,
            r.last_error_class,
            r.last_error_message,
            r.dead_reason,
        )
        for r in rows
        if r.status == DeliveryStatus.DEAD
    ]


_QUEUE_STATUS = text(
    """
    SELECT channel, status, count(*) AS n,
           min(next_attempt_at) FILTER (WHERE status = 'pending') AS next_due
    FROM deliveries GROUP BY channel, status ORDER BY channel, status
    """
)

_BREAKER_STATUS = text(
    """
    SELECT DISTINCT ON (detail->>'owner', detail->>'channel', detail->>'provider')
           at, detail->>'owner' AS owner, detail->>'channel' AS channel,
           detail->>'provider' AS provider, detail->>'new' AS state, detail->>'reason' AS reason
    FROM audit_log
    WHERE kind = 'breaker.transition' AND at > now() - make_interval(secs => :horizon)
    ORDER BY detail->>'owner', detail->>'channel', detail->>'provider', at DESC
    """
)


@dataclass(frozen=True, slots=True)
class QueueCount:
    channel: str
    status: str
    count: int
    next_due: datetime | None


@dataclass(frozen=True, slots=True)
class BreakerStatus:
    """The last recorded transition of one breaker in one replica."""

    at: datetime
    owner: str
    channel: str
    provider: str
    state: str
    reason: str


async def queue_status(conn: AsyncConnection) -> list[QueueCount]:
    """Deliveries per channel and status, with the earliest due pending one."""
    return [QueueCount(*row) for row in await conn.execute(_QUEUE_STATUS)]


async def breaker_status(
    conn: AsyncConnection, *, horizon_seconds: float = 7 * 86400
) -> list[BreakerStatus]:
    """The latest state of every breaker that changed state within the horizon.

    Breakers live in each replica's memory; their transitions are audited, so the newest
    transition per replica and provider is that breaker's state (a breaker with no entry
    has been closed since its replica started).
    """
    rows = await conn.execute(_BREAKER_STATUS, {"horizon": horizon_seconds})
    return [BreakerStatus(*row) for row in rows]
