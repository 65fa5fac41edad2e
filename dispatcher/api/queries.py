"""Every read statement of the audit API, built from allow-listed filters with bound
parameters only (no value is ever interpolated into SQL).

Lists are keyset-paginated newest first on ``(time, id)``: the condition
``t <= :t AND (t < :t OR id < :id)`` lets PostgreSQL walk an index that starts with the
time column (or with an equality column and then the time) and stop after ``limit + 1``
rows, however deep the page.
"""

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

from sqlalchemy import (
    ColumnElement,
    Select,
    exists,
    func,
    or_,
    select,
    text,
    union,
)
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncConnection

from dispatcher.api.filters import (
    AuditFilters,
    DeliveryFilters,
    EventFilters,
    RejectedFilters,
)
from dispatcher.db.models import AuditEntry, Delivery, DeliveryAttempt, Event
from dispatcher.db.models import RejectedMessage as Rejected
from dispatcher.events.kinds import Severity

E = Event.__table__.c
D = Delivery.__table__.c
A = DeliveryAttempt.__table__.c
L = AuditEntry.__table__.c
R = Rejected.__table__.c

#: Most deliveries, attempts per delivery and audit entries one event detail returns.
DETAIL_CAP = 500

Keyset = tuple[datetime, Any]
#: A result row of any width.
Rec = Row[*tuple[Any, ...]]


def _after(
    time_col: Any, id_col: Any, after: Keyset | None
) -> list[ColumnElement[bool]]:
    if after is None:
        return []
    t, i = after
    return [time_col <= t, or_(time_col < t, id_col < i)]


def _range(col: Any, low: datetime | None, high: datetime | None) -> list[Any]:
    out = []
    if low is not None:
        out.append(col >= low)
    if high is not None:
        out.append(col < high)
    return out


async def _rows(conn: AsyncConnection, stmt: Select[Any]) -> list[Rec]:
    return list(await conn.execute(stmt))


# --- events -------------------------------------------------------------------------

_EVENT_LIST = (
    E.id,
    E.type,
    E.severity,
    E.occurred_at,
    E.received_at,
    E.subject_id,
    E.correlation_id,
    E.delivery_count,
)


def _event_conditions(f: EventFilters) -> list[Any]:
    cond: list[Any] = []
    if f.type is not None:
        if f.type.endswith(".*"):
            cond.append(E.type.startswith(f.type[:-1], autoescape=True))
        else:
            cond.append(E.type == f.type)
    if f.severity:
        cond.append(E.severity.in_([s.value for s in f.severity]))
    if f.subject_id is not None:
        cond.append(E.subject_id == f.subject_id)
    if f.correlation_id is not None:
        cond.append(E.correlation_id == f.correlation_id)
    cond += _range(E.received_at, f.received_after, f.received_before)
    cond += _range(E.occurred_at, f.occurred_after, f.occurred_before)
    if f.delivery_status:
        cond.append(
            exists().where(
                D.event_id == E.id,
                D.status.in_([s.value for s in f.delivery_status]),
            )
        )
    return cond


async def events_page(
    conn: AsyncConnection, f: EventFilters, after: Keyset | None, limit: int
) -> list[Rec]:
    stmt = (
        select(*_EVENT_LIST)
        .where(*_event_conditions(f), *_after(E.received_at, E.id, after))
        .order_by(E.received_at.desc(), E.id.desc())
        .limit(limit + 1)
    )
    return await _rows(conn, stmt)


async def event(conn: AsyncConnection, event_id: UUID) -> Rec | None:
    stmt = select(*_EVENT_LIST, E.payload, E.traceparent).where(E.id == event_id)
    return (await conn.execute(stmt)).first()


# --- deliveries ---------------------------------------------------------------------

_DELIVERY = (
    D.id,
    D.event_id,
    D.channel,
    D.recipient,
    D.rule,
    D.status,
    D.priority,
    D.attempts,
    D.next_attempt_at,
    D.created_at,
    D.updated_at,
    D.delivered_at,
    D.dead_at,
    D.last_error_class,
    D.last_provider,
    D.last_error_message,
)


def _delivery_conditions(f: DeliveryFilters, recipient_hash: bytes | None) -> list[Any]:
    cond: list[Any] = []
    if f.channel:
        cond.append(D.channel.in_([c.value for c in f.channel]))
    if f.status:
        cond.append(D.status.in_([s.value for s in f.status]))
    if f.severity:
        cond.append(D.priority.in_([Severity(s).priority for s in f.severity]))
    if recipient_hash is not None:
        cond.append(D.recipient_hash == recipient_hash)
    if f.endpoint is not None:
        cond += [D.channel == "webhook", D.recipient == f.endpoint]
    if f.provider is not None:
        cond.append(D.last_provider == f.provider)
    if f.error_class:
        cond.append(D.last_error_class.in_([e.value for e in f.error_class]))
    if f.min_attempts is not None:
        cond.append(D.attempts >= f.min_attempts)
    if f.event_id is not None:
        cond.append(D.event_id == f.event_id)
    cond += _range(D.created_at, f.created_after, f.created_before)
    return cond


async def deliveries_page(
    conn: AsyncConnection,
    f: DeliveryFilters,
    recipient_hash: bytes | None,
    after: Keyset | None,
    limit: int,
) -> list[Rec]:
    stmt = (
        select(*_DELIVERY)
        .where(
            *_delivery_conditions(f, recipient_hash),
            *_after(D.created_at, D.id, after),
        )
        .order_by(D.created_at.desc(), D.id.desc())
        .limit(limit + 1)
    )
    return await _rows(conn, stmt)


async def count_deliveries(
    conn: AsyncConnection,
    f: DeliveryFilters,
    recipient_hash: bytes | None,
    exact_limit: int,
) -> tuple[int, bool]:
    """``(count, approximated)``: exact up to ``exact_limit`` rows, then the planner's
    estimate (never below ``exact_limit + 1``), so a count never scans a huge table."""
    matching = select(D.id).where(*_delivery_conditions(f, recipient_hash))
    bounded = matching.limit(exact_limit + 1).subquery()
    exact = (await conn.execute(select(func.count()).select_from(bounded))).scalar_one()
    if exact <= exact_limit:
        return exact, False
    # render_postcompile: list filters (``IN``) become one placeholder per value, as
    # they are at execution; uncompiled they would reach PostgreSQL as a marker.
    compiled = matching.compile(
        dialect=conn.dialect, compile_kwargs={"render_postcompile": True}
    )
    args = tuple(compiled.params[name] for name in compiled.positiontup or ())
    plan = (
        await conn.exec_driver_sql(f"EXPLAIN (FORMAT JSON) {compiled}", args)
    ).scalar_one()
    doc = json.loads(plan) if isinstance(plan, str) else plan
    estimate = int(doc[0]["Plan"]["Plan Rows"])
    return max(estimate, exact_limit + 1), True


async def delivery(conn: AsyncConnection, delivery_id: UUID) -> Rec | None:
    return (await conn.execute(select(*_DELIVERY).where(D.id == delivery_id))).first()


async def event_deliveries(conn: AsyncConnection, event_id: UUID) -> list[Rec]:
    stmt = (
        select(*_DELIVERY)
        .where(D.event_id == event_id)
        .order_by(D.channel, D.created_at, D.id)
        .limit(DETAIL_CAP)
    )
    return await _rows(conn, stmt)


# --- attempts -----------------------------------------------------------------------

_ATTEMPT = (
    A.id,
    A.delivery_id,
    A.attempt,
    A.provider,
    A.started_at,
    A.finished_at,
    A.outcome,
    A.error_class,
    A.error_message,
    A.provider_code,
    A.latency_ms,
)


async def attempts_of(
    conn: AsyncConnection, delivery_ids: Sequence[UUID]
) -> dict[UUID, list[Rec]]:
    """Each delivery's attempts, oldest first (at most ``DETAIL_CAP`` per delivery)."""
    if not delivery_ids:
        return {}
    stmt = (
        select(*_ATTEMPT)
        .where(A.delivery_id.in_(list(delivery_ids)))
        .order_by(A.delivery_id, A.attempt, A.id)
    )
    out: dict[UUID, list[Rec]] = {i: [] for i in delivery_ids}
    for row in await conn.execute(stmt):
        bucket = out[row.delivery_id]
        if len(bucket) < DETAIL_CAP:
            bucket.append(row)
    return out


async def attempts_page(
    conn: AsyncConnection, delivery_id: UUID, after: int | None, limit: int
) -> list[Rec]:
    """A delivery's attempts, oldest first (their order is the timeline)."""
    stmt = (
        select(*_ATTEMPT)
        .where(A.delivery_id == delivery_id)
        .order_by(A.id)
        .limit(limit + 1)
    )
    if after is not None:
        stmt = stmt.where(A.id > after)
    return await _rows(conn, stmt)


# --- audit log ----------------------------------------------------------------------

_AUDIT = (L.id, L.at, L.kind, L.event_id, L.delivery_id, L.detail)


async def audit_page(
    conn: AsyncConnection, f: AuditFilters, after: Keyset | None, limit: int
) -> list[Rec]:
    cond: list[Any] = []
    if f.kind:
        cond.append(L.kind.in_([k.value for k in f.kind]))
    if f.event_id is not None:
        cond.append(L.event_id == f.event_id)
    if f.delivery_id is not None:
        cond.append(L.delivery_id == f.delivery_id)
    cond += _range(L.at, f.after, f.before)
    stmt = (
        select(*_AUDIT)
        .where(*cond, *_after(L.at, L.id, after))
        .order_by(L.at.desc(), L.id.desc())
        .limit(limit + 1)
    )
    return await _rows(conn, stmt)


async def event_audit(conn: AsyncConnection, event_id: UUID) -> list[Rec]:
    """Audit entries about an event or one of its deliveries, oldest first."""
    # A UNION of two index lookups, not one OR: with the OR, PostgreSQL walked the whole
    # audit log in time order filtering each row (460 ms at a million events, see
    # docs/benchmarks.md, "Audit API at one million events").
    ids = select(D.id).where(D.event_id == event_id).scalar_subquery()
    about = union(
        select(*_AUDIT).where(L.event_id == event_id),
        select(*_AUDIT).where(L.delivery_id.in_(ids)),
    ).subquery()
    stmt = select(*about.c).order_by(about.c.at, about.c.id).limit(DETAIL_CAP)
    return await _rows(conn, stmt)


# --- rejected messages --------------------------------------------------------------

_REJECTED = (
    R.id,
    R.received_at,
    R.source,
    R.reason,
    R.message,
    R.body_size,
    R.routing_key,
    R.message_id,
)


async def rejected_page(
    conn: AsyncConnection, f: RejectedFilters, after: Keyset | None, limit: int
) -> list[Rec]:
    cond: list[Any] = []
    if f.reason:
        cond.append(R.reason.in_([r.value for r in f.reason]))
    cond += _range(R.received_at, f.received_after, f.received_before)
    stmt = (
        select(*_REJECTED)
        .where(*cond, *_after(R.received_at, R.id, after))
        .order_by(R.received_at.desc(), R.id.desc())
        .limit(limit + 1)
    )
    return await _rows(conn, stmt)


async def rejected_one(conn: AsyncConnection, rejected_id: int) -> Rec | None:
    stmt = select(*_REJECTED, R.body, R.headers).where(R.id == rejected_id)
    return (await conn.execute(stmt)).first()


# --- channel snapshot (run in the background, never per request) --------------------

_BACKLOG = text(
    """
    SELECT channel, CASE WHEN channel = 'webhook' THEN recipient END AS endpoint,
           count(*) FILTER (WHERE status = 'pending' AND next_attempt_at <= now()) AS due,
           min(next_attempt_at) FILTER (WHERE status = 'pending'
                                        AND next_attempt_at <= now()) AS oldest_due,
           count(*) FILTER (WHERE status = 'in_flight') AS in_flight
    FROM deliveries WHERE status IN ('pending', 'in_flight')
    GROUP BY 1, 2
    """
)

_DEAD = text(
    "SELECT channel, count(*) AS dead FROM deliveries WHERE status = 'dead' GROUP BY 1"
)

#: Due backlog per channel and priority (severity), for the per-severity age alerts.
_DUE_BY_PRIORITY = text(
    """
    SELECT channel, priority, count(*) AS due, min(next_attempt_at) AS oldest_due
    FROM deliveries WHERE status = 'pending' AND next_attempt_at <= now()
    GROUP BY 1, 2
    """
)

_RECENT = text(
    """
    SELECT d.channel, a.provider, count(*) AS attempts,
           count(*) FILTER (WHERE a.outcome = 'delivered') AS delivered,
           (array_agg(a.error_class ORDER BY a.started_at DESC)
               FILTER (WHERE a.error_class IS NOT NULL))[1] AS last_error_class
    FROM delivery_attempts a JOIN deliveries d ON d.id = a.delivery_id
    WHERE a.started_at > now() - make_interval(secs => :window)
    GROUP BY 1, 2
    """
)


async def channel_backlog(conn: AsyncConnection) -> list[Rec]:
    return list(await conn.execute(_BACKLOG))


async def due_by_priority(conn: AsyncConnection) -> list[Rec]:
    return list(await conn.execute(_DUE_BY_PRIORITY))


async def dead_letters(conn: AsyncConnection) -> list[Rec]:
    return list(await conn.execute(_DEAD))


async def recent_attempts(conn: AsyncConnection, window: float) -> list[Rec]:
    return list(await conn.execute(_RECENT, {"window": window}))
