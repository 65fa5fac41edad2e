"""``/v1/rejected``: messages that were not valid events, kept with their reason."""

from typing import Annotated

from fastapi import APIRouter, Path, Query

from dispatcher.api import queries, resources
from dispatcher.api.filters import RejectedQuery
from dispatcher.api.pagination import Page, paginate
from dispatcher.api.problems import PROBLEM_RESPONSES, ApiProblem
from dispatcher.api.reader import AuditReader, time_keyset

router = APIRouter(
    prefix="/v1/rejected", tags=["rejected"], responses=PROBLEM_RESPONSES
)


@router.get("", response_model=Page[resources.Rejected])
async def list_rejected(
    reader: AuditReader, q: Annotated[RejectedQuery, Query()]
) -> Page[resources.Rejected]:
    """Rejected messages newest first: reason, time and size, never the body."""
    filters = q.active()
    after = time_keyset(reader.decode(q.cursor, "rejected", filters), int)
    async with reader.connect() as conn:
        rows = await queries.rejected_page(conn, q, after, q.limit)
    page, iterator, done = paginate(
        rows,
        q.limit,
        lambda r: reader.encode("rejected", filters, (r.received_at.isoformat(), r.id)),
    )
    return Page(
        data=[resources.rejected(r) for r in page], iterator=iterator, done=done
    )


@router.get("/{rejected_id}", response_model=resources.RejectedDetail)
async def get_rejected(
    reader: AuditReader, rejected_id: Annotated[int, Path(ge=1, le=2**63 - 1)]
) -> resources.RejectedDetail:
    """One rejected message; its raw body and headers only with `audit:read-pii`."""
    async with reader.connect() as conn:
        row = await queries.rejected_one(conn, rejected_id)
    if row is None:
        raise ApiProblem(404, "no rejected message with this id")
    await reader.disclosed([rejected_id])
    return resources.rejected_detail(row, reader.sees_pii)
