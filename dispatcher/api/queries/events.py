"""Reads of events: the filtered list and one event."""

from typing import Any
from uuid import UUID

from sqlalchemy import Select, exists, select
from sqlalchemy.ext.asyncio import AsyncConnection

from dispatcher.api.filters import EventFilters
from dispatcher.api.queries import keyset
from dispatcher.db.models import Delivery, Event

E = Event.__table__.c
D = Delivery.__table__.c

_EVENT_LIST = keyset.columns(
    Event.__table__,
    "id type severity occurred_at received_at subject_id correlation_id delivery_count",
)


def _event_conditions(f: EventFilters) -> list[Any]:
    cond: list[Any] = []
    if f.type is not None:
        if f.type.endswith(".*"):
            cond.append(E.type.startswith(f.type[:-1], autoescape=True))
        else:
            cond.append(E.type == f.type)
    cond += keyset.any_of((E.severity, f.severity))
    cond += keyset.equal(
        (E.subject_id, f.subject_id), (E.correlation_id, f.correlation_id)
    )
    cond += keyset.time_range(E.received_at, f.received_after, f.received_before)
    cond += keyset.time_range(E.occurred_at, f.occurred_after, f.occurred_before)
    if f.delivery_status:
        # Walking events newest first, each one is probed here. For ``dead`` alone the
        # probe is an index-only lookup in ``ix_deliveries_dead_event_id`` (dead rows
        # only); a rare status makes PostgreSQL start from its deliveries instead.
        cond.append(
            exists().where(
                D.event_id == E.id, keyset.one_of(D.status, f.delivery_status)
            )
        )
    return cond


def events_select(
    f: EventFilters, after: keyset.Keyset | None, limit: int
) -> Select[Any]:
    return keyset.newest_first(
        _EVENT_LIST, _event_conditions(f), (E.received_at, E.id), after, limit
    )


async def events_page(
    conn: AsyncConnection, f: EventFilters, after: keyset.Keyset | None, limit: int
) -> list[keyset.Rec]:
    return await keyset.rows(conn, events_select(f, after, limit))


async def event(conn: AsyncConnection, event_id: UUID) -> keyset.Rec | None:
    stmt = select(*_EVENT_LIST, E.payload, E.traceparent).where(E.id == event_id)
    return (await conn.execute(stmt)).first()
