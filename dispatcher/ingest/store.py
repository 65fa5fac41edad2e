"""Every SQL statement of ingest: one batch of messages in one transaction.

Two or three round trips per batch whatever its size: insert the events, look up the
digests of the ones that already existed (rare), then write deliveries, audit entries and
rejected messages in one statement and wake the channel workers. Deliveries this
replica's workers have free slots for are leased to them in that statement (the fast path,
``outbox/handoff.py``) and need no wake-up and no claim.

This is the hot path, so it drives the asyncpg connection directly (SQLAlchemy's execution
layer cost more CPU per batch than the statements' own encoding); the SQL keeps named
parameters for readability and is turned into asyncpg's ``$n`` form once, at import.
"""

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from dispatcher.db.sql import Executor, Statement
from dispatcher.db.states import AuditKind
from dispatcher.events.rejection import Rejection
from dispatcher.ingest.incoming import Accepted, Incoming, Source
from dispatcher.outbox.claims import OUTBOX_NOTIFY_CHANNEL, lease_expiry
from dispatcher.outbox.handoff import Handoff, Reservation
from dispatcher.telemetry import tracing

from .columns import AuditRows, DeliveryRows, RejectedRows, event_params

_INSERT_EVENTS = Statement.compile(
    """
    INSERT INTO events (id, schema_version, type, severity, occurred_at, subject_id,
                        correlation_id, payload, digest, traceparent, tracestate, delivery_count)
    SELECT n.id, 1, n.type, n.severity, n.occurred_at, n.subject_id, n.correlation_id,
           n.payload::jsonb, n.digest, n.traceparent, n.tracestate, n.delivery_count
    FROM unnest(CAST(:ids AS uuid[]), CAST(:types AS text[]), CAST(:severities AS text[]),
                CAST(:occurred AS timestamptz[]), CAST(:subjects AS text[]),
                CAST(:correlations AS text[]), CAST(:payloads AS text[]),
                CAST(:digests AS bytea[]), CAST(:traceparents AS text[]),
                CAST(:tracestates AS text[]), CAST(:delivery_counts AS smallint[]))
         AS n(id, type, severity, occurred_at, subject_id, correlation_id, payload, digest,
              traceparent, tracestate, delivery_count)
    ON CONFLICT (id) DO NOTHING
    RETURNING id
    """
)

_EXISTING_DIGESTS = Statement.compile(
    "SELECT id, digest FROM events WHERE id = ANY(CAST(:ids AS uuid[]))"
)

#: Deliveries with a ``lease`` (the fast path: a slot of this replica's worker is reserved
#: for them) are inserted leased to ``:owner`` exactly as a claim leases a row
#: (``outbox/claims.py``): ``in_flight``, attempt 1, a new token, expiry = lease; the
#: others pending and due now. Only channels with pending rows are notified. The leased
#: rows come back with their event's payload, as a claim returns them; one row of NULLs
#: when none was leased.
_WRITE_REST = Statement.compile(
    f"""
    WITH deliveries_in AS (
        INSERT INTO deliveries (id, event_id, channel, recipient, rule, priority, traceparent,
                                recipient_hash, status, attempts, lease_token, lease_owner,
                                next_attempt_at)
        SELECT gen_random_uuid(), d.event_id, d.channel, d.recipient, d.rule, d.priority,
               d.traceparent, d.recipient_hash,
               CASE WHEN d.lease IS NULL THEN 'pending' ELSE 'in_flight' END,
               CASE WHEN d.lease IS NULL THEN 0 ELSE 1 END,
               CASE WHEN d.lease IS NULL THEN NULL ELSE gen_random_uuid() END,
               CASE WHEN d.lease IS NULL THEN NULL ELSE CAST(:owner AS text) END,
               {lease_expiry("coalesce(d.lease, 0)")}
        FROM unnest(CAST(:d_events AS uuid[]), CAST(:d_channels AS text[]),
                    CAST(:d_recipients AS text[]), CAST(:d_rules AS text[]),
                    CAST(:d_priorities AS smallint[]), CAST(:d_traceparents AS text[]),
                    CAST(:d_recipient_hashes AS bytea[]), CAST(:d_leases AS float8[]))
             AS d(event_id, channel, recipient, rule, priority, traceparent, recipient_hash,
                  lease)
        RETURNING id, event_id, channel, recipient, attempts, lease_token, priority,
                  created_at, traceparent
    ), rejected_in AS (
        INSERT INTO rejected_messages (source, reason, message, body, body_size, headers,
                                       routing_key, message_id)
        SELECT r.source, r.reason, r.message, r.body, r.body_size, r.headers::jsonb,
               r.routing_key, r.message_id
        FROM unnest(CAST(:r_sources AS text[]), CAST(:r_reasons AS text[]),
                    CAST(:r_messages AS text[]), CAST(:r_bodies AS bytea[]),
                    CAST(:r_sizes AS integer[]), CAST(:r_headers AS text[]),
                    CAST(:r_routing_keys AS text[]), CAST(:r_message_ids AS text[]))
             AS r(source, reason, message, body, body_size, headers, routing_key, message_id)
        RETURNING id, reason, message_id
    ), audit_in AS (
        INSERT INTO audit_log (kind, event_id, detail)
        SELECT a.kind, a.event_id, a.detail::jsonb
        FROM unnest(CAST(:a_kinds AS text[]), CAST(:a_events AS uuid[]),
                    CAST(:a_details AS text[])) AS a(kind, event_id, detail)
        UNION ALL
        SELECT 'message.rejected', NULL,
               jsonb_build_object('rejected_id', id, 'reason', reason, 'message_id', message_id)
        FROM rejected_in
    ), woken AS (
        SELECT count(*) AS n
        FROM (SELECT pg_notify(:notify_channel, c)
              FROM (SELECT DISTINCT channel AS c FROM deliveries_in
                    WHERE lease_token IS NULL) AS pending) AS notified
    ), leased_events AS (
        -- By primary key from an array, as the claims read them: never a join that a
        -- generic plan could turn into a scan of the whole events table.
        SELECT id, payload FROM events
        WHERE id = ANY(ARRAY(SELECT event_id FROM deliveries_in
                             WHERE lease_token IS NOT NULL))
    )
    SELECT l.id, l.event_id, l.channel, l.recipient, l.attempts, l.lease_token, l.priority,
           l.created_at, l.traceparent, CAST(NULL AS uuid) AS replay_id, e.payload
    FROM woken
    LEFT JOIN (deliveries_in AS l JOIN leased_events AS e ON e.id = l.event_id)
         ON l.lease_token IS NOT NULL
    """  # noqa: S608 - constant SQL fragments; values are bound
)


@dataclass(slots=True)
class BatchResult:
    """What a batch wrote, for logs and tests."""

    stored: int = 0
    duplicates: int = 0
    conflicts: int = 0
    rejected: int = 0
    deliveries: int = 0
    unrouted: list[UUID] = field(default_factory=list)
    #: Slots of this replica's workers held for deliveries the batch leased (fast path):
    #: ``start`` them after the commit, ``release`` them if it fails.
    reservation: Reservation | None = None


async def persist_batch(
    conn: Executor,
    batch: Sequence[Incoming],
    *,
    max_body_bytes: int,
    recipient_key: bytes | None = None,
    handoff: Handoff | None = None,
) -> BatchResult:
    """Write one batch; the caller owns the transaction (commit, then ack).

    With ``recipient_key``, each delivery also gets the keyed hash of its recipient that
    the audit API searches by (``events/blind_index.py``). With ``handoff``, deliveries
    its workers have slots for are inserted leased to them: the caller starts
    ``BatchResult.reservation`` after the commit or releases it if the commit fails
    (released here if this raises).
    """
    result = BatchResult()
    accepted, repeats, rejected = _split(batch)
    # An event published without a trace context joins the trace of the ingest span
    # storing it: its deliveries' attempts, retries and replays then share one trace,
    # sampled or not as that span was (None while tracing is off).
    traceparent = tracing.current_traceparent()
    inserted: set[UUID] = set()
    if accepted:
        # In id order: two transactions (replicas) inserting some of the same ids lock
        # them in the same order, so one waits for the other instead of deadlocking.
        params = event_params(
            (accepted[event_id] for event_id in sorted(accepted)), traceparent
        )
        rows = await _INSERT_EVENTS.fetch(conn, **params)
        inserted = {row["id"] for row in rows}
    audit = AuditRows()
    deliveries = DeliveryRows(recipient_key, traceparent)
    for event_id in inserted:
        item, acc = accepted[event_id]
        deliveries.add(acc, item)
        _audit_received(audit, result, item, acc)
    repeats.extend(pair for eid, pair in accepted.items() if eid not in inserted)
    if repeats:
        known = {
            eid: acc.parsed.digest
            for eid, (_, acc) in accepted.items()
            if eid in inserted
        }
        missing = [
            a.parsed.event.event_id
            for _, a in repeats
            if a.parsed.event.event_id not in known
        ]
        if missing:
            rows = await _EXISTING_DIGESTS.fetch(conn, ids=missing)
            known.update({row["id"]: row["digest"] for row in rows})
        for item, acc in repeats:
            _audit_repeat(
                audit, result, item, acc, known.get(acc.parsed.event.event_id)
            )
    rejects = RejectedRows(max_body_bytes)
    for item, rejection in rejected:
        rejects.add(item, rejection)
    if deliveries.event_ids or audit.kinds or rejects.reasons:
        result.reservation = await _write_rest(
            conn, deliveries, rejects, audit, handoff
        )
    result.stored = len(inserted)
    result.rejected = len(rejected)
    result.deliveries = len(deliveries.event_ids)
    return result


async def _write_rest(
    conn: Executor,
    deliveries: "DeliveryRows",
    rejects: "RejectedRows",
    audit: "AuditRows",
    handoff: Handoff | None,
) -> Reservation | None:
    """Deliveries (leased where the workers reserved slots), rejects, audit, wake-ups."""
    reservation = (
        handoff.reserve(deliveries.offers())
        if handoff is not None and deliveries.event_ids
        else None
    )
    rest: dict[str, Any] = {
        **deliveries.params(),
        **rejects.params(),
        **audit.params(),
        "d_leases": [None] * len(deliveries.event_ids)
        if reservation is None
        else list(reservation.leases),
        "owner": None if reservation is None else reservation.owner,
        "notify_channel": OUTBOX_NOTIFY_CHANNEL,
    }
    try:
        rows = await _WRITE_REST.fetch(conn, **rest)
    except BaseException:
        if reservation is not None:
            reservation.release()
        raise
    if reservation is not None:
        reservation.leased(deliveries.leased(rows))
    return reservation


_Pair = tuple[Incoming, Accepted]


def _split(
    batch: Sequence[Incoming],
) -> tuple[dict[UUID, _Pair], list[_Pair], list[tuple[Incoming, Rejection]]]:
    """Accepted (first of each event_id), repeats within the batch, and rejections."""
    accepted: dict[UUID, _Pair] = {}
    repeats: list[_Pair] = []
    rejected: list[tuple[Incoming, Rejection]] = []
    for item in batch:
        outcome = item.outcome
        if isinstance(outcome, Rejection):
            rejected.append((item, outcome))
        elif outcome.parsed.event.event_id in accepted:
            repeats.append((item, outcome))
        else:
            accepted[outcome.parsed.event.event_id] = (item, outcome)
    return accepted, repeats, rejected


def _audit_received(
    audit: "AuditRows", result: BatchResult, item: Incoming, acc: Accepted
) -> None:
    event_id = acc.parsed.event.event_id
    detail: dict[str, Any] = {"deliveries": len(acc.routes)}
    if item.source is not Source.INGEST:
        detail["source"] = item.source.value
    if acc.routes:
        audit.add(AuditKind.EVENT_RECEIVED, event_id, detail)
    else:
        audit.add(AuditKind.EVENT_UNROUTED, event_id, detail)
        result.unrouted.append(event_id)


def _audit_repeat(
    audit: "AuditRows",
    result: BatchResult,
    item: Incoming,
    acc: Accepted,
    stored_digest: bytes | None,
) -> None:
    """Same id again: a duplicate when the content matches, else a conflict (original kept)."""
    detail: dict[str, Any] = {
        "message_id": item.message_id,
        "source": item.source.value,
    }
    if stored_digest == acc.parsed.digest:
        result.duplicates += 1
        audit.add(AuditKind.EVENT_DUPLICATE, acc.parsed.event.event_id, detail)
    else:
        result.conflicts += 1
        detail["digest"] = acc.parsed.digest.hex()
        audit.add(AuditKind.EVENT_CONFLICT, acc.parsed.event.event_id, detail)
