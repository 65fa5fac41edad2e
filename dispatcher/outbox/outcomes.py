"""The SQL of outcomes: apply what an attempt came to, fenced by its lease token.

Outcomes are applied only where the row's ``lease_token`` is still the one the attempt's
claim (or the fast path's insert) drew, so a late result from an expired lease cannot
overwrite what the newer holder did; every attempt is recorded all the same.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from dispatcher.db.plans import INDEX_PLANS
from dispatcher.db.sql import Executor, Statement
from dispatcher.db.states import DeliveryStatus

_COMPLETE = Statement.compile(
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
            mirrored_at = CASE WHEN r.status = 'dead' THEN NULL ELSE d.mirrored_at END,
            updated_at = now()
        FROM r
        WHERE d.id = r.id AND d.lease_token = r.token
        RETURNING d.id, r.token, d.event_id, d.channel, d.status, d.attempts,
                  d.last_error_class, d.last_error_message, r.dead_reason, d.replay_id
    ), attempts AS (
        -- Lineage: an attempt after a replay carries the replay's id (outbox/replays.py).
        INSERT INTO delivery_attempts (delivery_id, attempt, provider, started_at, finished_at,
                                       outcome, error_class, error_message, provider_code,
                                       latency_ms, lineage, replay_id)
        SELECT a.delivery_id, a.attempt, a.provider, a.started_at, a.finished_at, a.outcome,
               a.error_class, a.error_message, a.provider_code, a.latency_ms,
               CASE WHEN x.replay_id IS NOT NULL THEN 'replay'
                    WHEN a.attempt = 1 THEN 'initial' ELSE 'retry' END,
               x.replay_id
        FROM unnest(CAST(:a_ids AS uuid[]), CAST(:a_attempts AS integer[]),
                    CAST(:a_providers AS text[]), CAST(:a_started AS timestamptz[]),
                    CAST(:a_finished AS timestamptz[]), CAST(:a_outcomes AS text[]),
                    CAST(:a_error_classes AS text[]), CAST(:a_error_messages AS text[]),
                    CAST(:a_codes AS text[]), CAST(:a_latencies AS float8[]))
             WITH ORDINALITY
             AS a(delivery_id, attempt, provider, started_at, finished_at, outcome,
                  error_class, error_message, provider_code, latency_ms, n)
        -- The replay from the row the update returned; the table is read again only
        -- for an attempt whose outcome was fenced off.
        LEFT JOIN applied AS ap ON ap.id = a.delivery_id
        CROSS JOIN LATERAL (
            SELECT CASE WHEN ap.id IS NOT NULL THEN ap.replay_id
                        ELSE (SELECT replay_id FROM deliveries WHERE id = a.delivery_id)
                   END AS replay_id
        ) AS x
        -- In the order given: the attempt ids follow it.
        ORDER BY a.n
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
    SELECT id, token, event_id, channel, status, attempts, last_error_class,
           last_error_message, dead_reason
    FROM applied
    """
)

#: Session settings of the connection that runs ``complete`` (the recorder's): one
#: generic plan, reaching each delivery by primary key whatever the statistics said when
#: it was made (``db/plans.py``); the foreign-key check the attempts' insert fires is
#: planned under the same settings. tests/integration/test_outcome_writes.py checks it.
OUTCOME_SESSION = INDEX_PLANS

#: Extend the leases still held by these claims, skipping rows another statement has
#: locked (a claim taking an expired lease, or a recording statement still running): it
#: never waits, so it works while the recorder's own statement hangs. By token, like
#: every outcome, so it never extends somebody else's lease.
_RENEW = Statement.compile(
    """
    WITH r AS (
        SELECT * FROM unnest(CAST(:ids AS uuid[]), CAST(:tokens AS uuid[]),
                             CAST(:leases AS float8[])) AS r(id, token, lease)
    ), held AS (
        SELECT d.id, r.lease FROM deliveries AS d JOIN r ON d.id = r.id
        WHERE d.lease_token = r.token AND d.status = 'in_flight'
        FOR UPDATE OF d SKIP LOCKED
    )
    UPDATE deliveries AS d
    SET next_attempt_at = greatest(d.next_attempt_at,
                                   now() + make_interval(secs => h.lease)),
        updated_at = now()
    FROM held AS h
    WHERE d.id = h.id
    RETURNING d.id
    """
)


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
class Applied:
    """An outcome that passed the fence, and the delivery's state after it."""

    delivery_id: UUID
    lease_token: UUID
    event_id: UUID
    channel: str
    status: DeliveryStatus
    attempts: int
    error_class: str | None
    error_message: str | None
    dead_reason: str | None

    def dead_letter(self) -> "DeadLettered":
        return DeadLettered(
            self.delivery_id,
            self.event_id,
            self.channel,
            self.attempts,
            self.error_class,
            self.error_message,
            self.dead_reason,
        )


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


async def complete(
    conn: Executor, outcomes: Sequence[Outcome], notes: Sequence[AuditNote] = ()
) -> list[Applied]:
    """Apply outcomes (fenced by lease token), record every attempt, audit dead letters.

    Returns the outcomes that passed the fence; one missing from it was discarded (its
    lease had been taken over). One statement: outside a transaction it is its own, all
    or nothing.
    """
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
    rows = await _COMPLETE.fetch(conn, **params)
    return [
        Applied(
            r["id"],
            r["token"],
            r["event_id"],
            r["channel"],
            DeliveryStatus(r["status"]),
            r["attempts"],
            r["last_error_class"],
            r["last_error_message"],
            r["dead_reason"],
        )
        for r in rows
    ]


async def renew(
    conn: Executor, leases: Sequence[tuple[UUID, UUID, float]]
) -> set[UUID]:
    """Extend leases ``(delivery id, lease token, seconds)`` still held; the renewed ids.

    For outcomes that wait to be recorded: the attempt is over, but until its outcome is
    committed the row must not look abandoned. A lease is only ever lengthened, and one
    whose row is locked right now is skipped (try again later).
    """
    params = {
        "ids": [d for d, _, _ in leases],
        "tokens": [t for _, t, _ in leases],
        "leases": [s for _, _, s in leases],
    }
    rows = await _RENEW.fetch(conn, **params)
    return {r["id"] for r in rows}
