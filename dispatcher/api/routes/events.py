"""``/v1/events``: what happened to an event, from receipt to each attempt."""

from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Query

from dispatcher.api import queries, resources
from dispatcher.api.filters import EventQuery
from dispatcher.api.pagination import Page, paginate
from dispatcher.api.problems import PROBLEM_RESPONSES, ApiProblem
from dispatcher.api.reader import AuditReader, time_keyset

router = APIRouter(prefix="/v1/events", tags=["events"], responses=PROBLEM_RESPONSES)


@router.get("", response_model=Page[resources.EventSummary])
async def list_events(
    reader: AuditReader, q: Annotated[EventQuery, Query()]
) -> Page[resources.EventSummary]:
    """Events newest first (by receipt), filtered."""
    filters = q.active()
    after = time_keyset(reader.decode(q.cursor, "events", filters), UUID)
    async with reader.connect() as conn:
        rows = await queries.events_page(conn, q, after, q.limit)
    page, iterator, done = paginate(
        rows,
        q.limit,
        lambda r: reader.encode("events", filters, (r.received_at.isoformat(), r.id)),
    )
    await reader.disclosed([r.id for r in page])
    return Page(
        data=[resources.event_summary(r, reader.sees_pii) for r in page],
        iterator=iterator,
        done=done,
    )


@router.get("/{event_id}", response_model=resources.EventDetail)
async def get_event(reader: AuditReader, event_id: UUID) -> resources.EventDetail:
    """The event, its deliveries with each one's attempt timeline, and its audit entries."""
    async with reader.connect() as conn:
        row = await queries.event(conn, event_id)
        if row is None:
            raise ApiProblem(404, "no event with this id")
        deliveries = await queries.event_deliveries(conn, event_id)
        attempts = await queries.attempts_of(conn, [d.id for d in deliveries])
        audit = await queries.event_audit(conn, event_id)
    pii = reader.sees_pii
    detail = resources.event_detail(
        row,
        [
            resources.delivery_detail(
                d, [resources.attempt(a, pii) for a in attempts[d.id]], pii
            )
            for d in deliveries
        ],
        [resources.audit_item(a) for a in audit],
        pii,
    )
    await reader.disclosed([event_id], event_id=event_id)
    return detail
