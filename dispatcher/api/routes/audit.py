"""``/v1/audit``: the append-only audit log."""

from typing import Annotated

from fastapi import APIRouter, Query

from dispatcher.api import queries, resources
from dispatcher.api.filters import AuditQuery
from dispatcher.api.pagination import Page, paginate
from dispatcher.api.problems import PROBLEM_RESPONSES
from dispatcher.api.reader import AuditReader, time_keyset

router = APIRouter(prefix="/v1/audit", tags=["audit"], responses=PROBLEM_RESPONSES)


@router.get("", response_model=Page[resources.AuditItem])
async def list_audit(
    reader: AuditReader, q: Annotated[AuditQuery, Query()]
) -> Page[resources.AuditItem]:
    """Audit entries newest first, by kind, event, delivery and time."""
    filters = q.active()
    after = time_keyset(reader.decode(q.cursor, "audit", filters), int)
    async with reader.connect() as conn:
        rows = await queries.audit_page(conn, q, after, q.limit)
    page, iterator, done = paginate(
        rows,
        q.limit,
        lambda r: reader.encode("audit", filters, (r.at.isoformat(), r.id)),
    )
    return Page(
        data=[resources.audit_item(r) for r in page], iterator=iterator, done=done
    )
