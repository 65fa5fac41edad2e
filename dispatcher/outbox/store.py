"""The SQL of delivery: claim with a lease, record outcomes.

A claim is a lease: ``status = in_flight`` and ``next_attempt_at`` = lease expiry, so a row
whose worker died becomes claimable again by the same query. Each claim draws a new
``lease_token``; outcomes are applied only where the token still matches (fencing), so a
late result from an expired claim cannot overwrite the newer one.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple
from uuid import UUID

from dispatcher.db.models import DeliveryStatus
from dispatcher.db.sql import Executor, Statement, from_row
from dispatcher.events.kinds import LEAST_URGENT, ChannelKind

#: NOTIFY channel the delivery workers LISTEN on; the payload is the channel kind.
OUTBOX_NOTIFY_CHANNEL = "dispatcher_outbox"


#: The end of both claims: lease what the ``chosen`` CTE (id, priority, next_attempt_at)
#: picked from ``candidates``, and return it most urgent first, oldest due first, each
#: row with the claim's ``report`` (considered, capped); one row of NULLs and the report
#: when nothing was leased, since the report matters then too. By primary key from an
#: array rather than a join with ``chosen``: PostgreSQL cannot see the LIMITs, and after
#: five runs it may keep a generic plan that estimates thousands of rows and hash-joins
#: whole tables here (docs/benchmarks.md, "A blocked endpoint's backlog").
_LEASE_CHOSEN = """
    , leased AS (
        UPDATE deliveries AS d
        SET status = 'in_flight', attempts = d.attempts + 1, lease_token = gen_random_uuid(),
            lease_owner = :owner, next_attempt_at = now() + make_interval(secs => :lease),
            updated_at = now()
        FROM events AS e
        WHERE d.id = ANY(ARRAY(SELECT id FROM chosen)) AND e.id = d.event_id
        RETURNING d.id, d.event_id, d.recipient, d.attempts, d.lease_token, d.priority,
                  d.created_at, d.traceparent, d.replay_id, e.payload
    )
    SELECT l.id, l.event_id, l.recipient, l.attempts, l.lease_token, l.priority,
           l.created_at, l.traceparent, l.replay_id, l.payload, r.considered, r.capped
    FROM report AS r
    LEFT JOIN (leased AS l JOIN chosen AS c USING (id)) ON true
    ORDER BY c.priority, c.next_attempt_at
    """

#: Email and SMS: one ordered scan of the channel's due rows. One statement, so it is its
#: own transaction and one round trip per claim. Candidates beyond a recipient's room
#: under the cap are locked for the statement only and left as they were: not leased,
#: not reordered, due for the next claim, and their recipients reported as ``capped``.
_CHOOSE_BY_CHANNEL = """
    WITH candidates AS (
        SELECT id, recipient, priority, next_attempt_at FROM deliveries
        WHERE channel = :channel
          AND status IN ('pending', 'in_flight')
          AND next_attempt_at <= now()
          AND priority <= :max_priority
          AND NOT (recipient = ANY(CAST(:blocked AS text[])))
        ORDER BY priority, next_attempt_at
        LIMIT :limit
        FOR UPDATE SKIP LOCKED
    ), ranked AS (
        SELECT c.id, c.recipient, c.priority, c.next_attempt_at,
               CAST(:cap AS int) IS NULL
               OR c.nth <= CAST(:cap AS int) - coalesce(busy.n, 0) AS taken
        FROM (SELECT *, row_number() OVER (PARTITION BY recipient
                                           ORDER BY priority, next_attempt_at) AS nth
              FROM candidates) AS c
        LEFT JOIN unnest(CAST(:busy_recipients AS text[]), CAST(:busy_counts AS int[]))
             AS busy(recipient, n) USING (recipient)
    ), chosen AS (
        SELECT id, priority, next_attempt_at FROM ranked WHERE taken
    ), report AS (
        SELECT (SELECT count(*) FROM candidates) AS considered,
               ARRAY(SELECT DISTINCT recipient FROM ranked WHERE NOT taken) AS capped
    )
    """
_CLAIM = Statement.compile(_CHOOSE_BY_CHANNEL + _LEASE_CHOSEN)

#: Webhooks: the recipient names an endpoint, and an endpoint may be blocked (breaker
#: open) or at its in-flight cap while thousands of its rows wait. The channel-wide claim
#: above would read that whole backlog on every claim and filter it out row by row; this
#: one lists the endpoints that have rows (a loose index scan: one index probe each), then
#: reads at most each unblocked endpoint's room from ``ix_deliveries_webhook_lanes``, and
#: one row more: whether the cap left any behind (``capped``; locked for the statement
#: only, like the rows over the cap above). Same order, lease and fencing; ``considered``
#: counts the rows taken under the caps.
_CHOOSE_BY_ENDPOINT = """
    WITH RECURSIVE present(recipient) AS (
        (SELECT recipient FROM deliveries
         WHERE channel = 'webhook' AND status IN ('pending', 'in_flight')
         ORDER BY recipient LIMIT 1)
        UNION ALL
        SELECT (SELECT d.recipient FROM deliveries AS d
                WHERE d.channel = 'webhook' AND d.status IN ('pending', 'in_flight')
                  AND d.recipient > p.recipient
                ORDER BY d.recipient LIMIT 1)
        FROM present AS p WHERE p.recipient IS NOT NULL
    ), lanes AS (
        SELECT p.recipient,
               least(CAST(:limit AS int),
                     coalesce(CAST(:cap AS int) - coalesce(busy.n, 0), CAST(:limit AS int)))
                   AS room
        FROM present AS p
        LEFT JOIN unnest(CAST(:busy_recipients AS text[]), CAST(:busy_counts AS int[]))
             AS busy(recipient, n) USING (recipient)
        WHERE p.recipient IS NOT NULL
          AND NOT (p.recipient = ANY(CAST(:blocked AS text[])))
    ), candidates AS (
        SELECT l.recipient, l.room, c.id, c.priority, c.next_attempt_at,
               row_number() OVER (PARTITION BY l.recipient
                                  ORDER BY c.priority, c.next_attempt_at) AS nth
        FROM lanes AS l CROSS JOIN LATERAL (
            SELECT id, priority, next_attempt_at FROM deliveries
            WHERE channel = 'webhook' AND status IN ('pending', 'in_flight')
              AND recipient = l.recipient
              AND priority <= CAST(:max_priority AS int)
              AND next_attempt_at <= now()
            ORDER BY priority, next_attempt_at
            LIMIT greatest(l.room, 0) + 1
            FOR UPDATE SKIP LOCKED
        ) AS c
    ), chosen AS (
        SELECT id, priority, next_attempt_at FROM candidates
        WHERE nth <= room
        ORDER BY priority, next_attempt_at
        LIMIT CAST(:limit AS int)
    ), report AS (
        SELECT (SELECT count(*) FROM chosen) AS considered,
               -- Left for the cap only where the cap, not the claim's limit, was the room.
               ARRAY(SELECT recipient FROM candidates
                     WHERE nth > room AND room < CAST(:limit AS int)) AS capped
    )
    """
_CLAIM_LANES = Statement.compile(_CHOOSE_BY_ENDPOINT + _LEASE_CHOSEN)


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
                  d.last_error_class, d.last_error_message, r.dead_reason
    ), attempts AS (
        -- Lineage: an attempt after a replay carries the replay's id (outbox/replays.py).
        INSERT INTO delivery_attempts (delivery_id, attempt, provider, started_at, finished_at,
                                       outcome, error_class, error_message, provider_code,
                                       latency_ms, lineage, replay_id)
        SELECT a.delivery_id, a.attempt, a.provider, a.started_at, a.finished_at, a.outcome,
               a.error_class, a.error_message, a.provider_code, a.latency_ms,
               CASE WHEN d.replay_id IS NOT NULL THEN 'replay'
                    WHEN a.attempt = 1 THEN 'initial' ELSE 'retry' END,
               d.replay_id
        FROM unnest(CAST(:a_ids AS uuid[]), CAST(:a_attempts AS integer[]),
                    CAST(:a_providers AS text[]), CAST(:a_started AS timestamptz[]),
                    CAST(:a_finished AS timestamptz[]), CAST(:a_outcomes AS text[]),
                    CAST(:a_error_classes AS text[]), CAST(:a_error_messages AS text[]),
                    CAST(:a_codes AS text[]), CAST(:a_latencies AS float8[]))
             WITH ORDINALITY
             AS a(delivery_id, attempt, provider, started_at, finished_at, outcome,
                  error_class, error_message, provider_code, latency_ms, n)
        JOIN deliveries AS d ON d.id = a.delivery_id
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
    #: The replay that put this delivery back, None for one never dead-lettered.
    replay_id: UUID | None
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


class Claim(NamedTuple):
    """What one claim leased, most urgent first, and what it left behind."""

    rows: list[Claimed]
    #: ``limit`` when there may be more due right now (the claim's window was full).
    considered: int
    #: Recipients whose due rows it left behind for their cap: nothing announces those
    #: rows again, so their next claim must come from their attempts ending. A recipient
    #: already at its cap is named without its rows being read.
    capped: frozenset[str]


async def claim(
    conn: Executor,
    channel: str,
    *,
    limit: int,
    lease_seconds: float,
    owner: str,
    blocked: Sequence[str] = (),
    max_priority: int = LEAST_URGENT,
    cap: int | None = None,
    in_flight: Mapping[str, int] | None = None,
) -> Claim:
    """Lease up to ``limit`` due deliveries of one channel, most urgent first.

    With a ``cap``, no recipient gets more than ``cap`` minus its ``in_flight`` attempts;
    the rest stay due, untouched, and ``Claim.capped`` names their recipients. Webhook
    rows are claimed per endpoint (``_CLAIM_LANES``): the rows of ``blocked`` endpoints,
    and of endpoints at their cap, are not read at all. Outside a transaction the lease
    is committed when this returns (asyncpg hands the rows over only after the
    statement's implicit commit).
    """
    busy = dict(in_flight or {})
    at_cap = frozenset(r for r, n in busy.items() if cap is not None and n >= cap)
    args = {
        "channel": channel,
        "limit": limit,
        "cap": cap,
        "busy_recipients": list(busy),
        "busy_counts": list(busy.values()),
        "blocked": [*blocked, *at_cap],
        "max_priority": max_priority,
        "owner": owner,
        "lease": lease_seconds,
    }
    statement = _CLAIM_LANES if channel == ChannelKind.WEBHOOK else _CLAIM
    rows = await statement.fetch(conn, **args)
    report = rows[0]  # there is always one, with or without a leased row
    return Claim(
        [from_row(Claimed, row) for row in rows if row["id"] is not None],
        report["considered"],
        frozenset(report["capped"]) | at_cap,
    )


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
