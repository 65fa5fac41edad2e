"""Reads of deliveries and their attempts: lists, counts, one delivery, timelines."""

from collections.abc import Sequence
from typing import Any
from uuid import UUID

from sqlalchemy import Select, func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from dispatcher.api.filters import DeliveryFilters
from dispatcher.api.queries import keyset
from dispatcher.db.models import Delivery, DeliveryAttempt
from dispatcher.events.kinds import ChannelKind, Severity

D = Delivery.__table__.c
A = DeliveryAttempt.__table__.c

_DELIVERY = keyset.columns(
    Delivery.__table__,
    "id event_id channel recipient rule status priority attempts next_attempt_at "
    "created_at updated_at delivered_at dead_at last_error_class last_provider "
    "last_error_message",
)
_ATTEMPT = keyset.columns(
    DeliveryAttempt.__table__,
    "id delivery_id attempt provider started_at finished_at outcome error_class "
    "error_message provider_code latency_ms",
)


def _delivery_conditions(f: DeliveryFilters, recipient_hash: bytes | None) -> list[Any]:
    # Status is written out (one_of), so ``dead`` alone lists from
    # ``ix_deliveries_dead_created_at``.
    cond = keyset.any_of(
        (D.channel, f.channel),
        (D.status, f.status),
        (D.last_error_class, f.error_class),
    )
    if f.severity:
        cond.append(D.priority.in_([Severity(s).priority for s in f.severity]))
    if f.endpoint is not None:
        cond += [D.channel == ChannelKind.WEBHOOK.value, D.recipient == f.endpoint]
    if f.min_attempts is not None:
        cond.append(D.attempts >= f.min_attempts)
    cond += keyset.equal(
        (D.recipient_hash, recipient_hash),
        (D.last_provider, f.provider),
        (D.event_id, f.event_id),
    )
    cond += keyset.time_range(D.created_at, f.created_after, f.created_before)
    return cond


def deliveries_select(
    f: DeliveryFilters,
    recipient_hash: bytes | None,
    after: keyset.Keyset | None,
    limit: int,
) -> Select[Any]:
    cond = _delivery_conditions(f, recipient_hash)
    return keyset.newest_first(_DELIVERY, cond, (D.created_at, D.id), after, limit)


async def deliveries_page(
    conn: AsyncConnection,
    f: DeliveryFilters,
    recipient_hash: bytes | None,
    after: keyset.Keyset | None,
    limit: int,
) -> list[keyset.Rec]:
    return await keyset.rows(conn, deliveries_select(f, recipient_hash, after, limit))


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
    estimate = int((await keyset.plan(conn, matching))["Plan Rows"])
    return max(estimate, exact_limit + 1), True


async def delivery(conn: AsyncConnection, delivery_id: UUID) -> keyset.Rec | None:
    return (await conn.execute(select(*_DELIVERY).where(D.id == delivery_id))).first()


async def event_deliveries(conn: AsyncConnection, event_id: UUID) -> list[keyset.Rec]:
    stmt = (
        select(*_DELIVERY)
        .where(D.event_id == event_id)
        .order_by(D.channel, D.created_at, D.id)
        .limit(keyset.DETAIL_CAP)
    )
    return await keyset.rows(conn, stmt)


async def attempts_of(
    conn: AsyncConnection, delivery_ids: Sequence[UUID]
) -> dict[UUID, list[keyset.Rec]]:
    """Each delivery's attempts, oldest first (at most ``DETAIL_CAP`` per delivery)."""
    if not delivery_ids:
        return {}
    stmt = (
        select(*_ATTEMPT)
        .where(A.delivery_id.in_(list(delivery_ids)))
        .order_by(A.delivery_id, A.attempt, A.id)
    )
    out: dict[UUID, list[keyset.Rec]] = {i: [] for i in delivery_ids}
    for row in await conn.execute(stmt):
        bucket = out[row.delivery_id]
        if len(bucket) < keyset.DETAIL_CAP:
            bucket.append(row)
    return out


async def attempts_page(
    conn: AsyncConnection, delivery_id: UUID, after: int | None, limit: int
) -> list[keyset.Rec]:
    """A delivery's attempts, oldest first (their order is the timeline)."""
    stmt = (
        select(*_ATTEMPT)
        .where(A.delivery_id == delivery_id)
        .order_by(A.id)
        .limit(limit + 1)
    )
    if after is not None:
        stmt = stmt.where(A.id > after)
    return await keyset.rows(conn, stmt)
