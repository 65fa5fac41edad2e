"""Reads of the append-only records: the audit log and the rejected messages."""

from uuid import UUID

from sqlalchemy import select, union
from sqlalchemy.ext.asyncio import AsyncConnection

from dispatcher.api.filters import AuditFilters, RejectedFilters
from dispatcher.api.queries import keyset
from dispatcher.db.models import AuditEntry, Delivery
from dispatcher.db.models import RejectedMessage as Rejected

D = Delivery.__table__.c
L = AuditEntry.__table__.c
R = Rejected.__table__.c

_AUDIT = keyset.columns(AuditEntry.__table__, "id at kind event_id delivery_id detail")
_REJECTED = keyset.columns(
    Rejected.__table__,
    "id received_at source reason message body_size routing_key message_id",
)


async def audit_page(
    conn: AsyncConnection, f: AuditFilters, after: keyset.Keyset | None, limit: int
) -> list[keyset.Rec]:
    cond = [
        *keyset.any_of((L.kind, f.kind)),
        *keyset.equal((L.event_id, f.event_id), (L.delivery_id, f.delivery_id)),
        *keyset.time_range(L.at, f.after, f.before),
    ]
    return await keyset.rows(
        conn, keyset.newest_first(_AUDIT, cond, (L.at, L.id), after, limit)
    )


async def event_audit(conn: AsyncConnection, event_id: UUID) -> list[keyset.Rec]:
    """Audit entries about an event or one of its deliveries, oldest first."""
    # A UNION of two index lookups, not one OR: with the OR, PostgreSQL walked the whole
    # audit log in time order filtering each row (460 ms at a million events, see
    # docs/benchmarks.md, "Audit API at one million events").
    ids = select(D.id).where(D.event_id == event_id).scalar_subquery()
    about = union(
        select(*_AUDIT).where(L.event_id == event_id),
        select(*_AUDIT).where(L.delivery_id.in_(ids)),
    ).subquery()
    stmt = select(*about.c).order_by(about.c.at, about.c.id).limit(keyset.DETAIL_CAP)
    return await keyset.rows(conn, stmt)


async def rejected_page(
    conn: AsyncConnection, f: RejectedFilters, after: keyset.Keyset | None, limit: int
) -> list[keyset.Rec]:
    cond = [
        *keyset.any_of((R.reason, f.reason)),
        *keyset.time_range(R.received_at, f.received_after, f.received_before),
    ]
    stmt = keyset.newest_first(_REJECTED, cond, (R.received_at, R.id), after, limit)
    return await keyset.rows(conn, stmt)


async def rejected_one(conn: AsyncConnection, rejected_id: int) -> keyset.Rec | None:
    stmt = select(*_REJECTED, R.body, R.headers).where(R.id == rejected_id)
    return (await conn.execute(stmt)).first()
