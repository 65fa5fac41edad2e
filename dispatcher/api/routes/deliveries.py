"""``/v1/deliveries``: one message to one recipient on one channel, and its attempts."""

from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Query

from dispatcher.api import queries, resources
from dispatcher.api.filters import DeliveryFilters, DeliveryQuery, Paging
from dispatcher.api.pagination import Page, paginate
from dispatcher.api.problems import PROBLEM_RESPONSES, ApiProblem
from dispatcher.api.reader import AuditReader, Reader, time_keyset
from dispatcher.events.blind_index import recipient_digest
from dispatcher.events.kinds import ChannelKind
from dispatcher.events.schema import InvalidRecipientError, check_recipient

router = APIRouter(
    prefix="/v1/deliveries", tags=["deliveries"], responses=PROBLEM_RESPONSES
)


def _recipient_hash(reader: Reader, f: DeliveryFilters) -> bytes | None:
    if f.recipient is None:
        return None
    key = reader.state["recipient_key"]
    if key is None:
        raise ApiProblem(
            400,
            "search by recipient is not configured on this server "
            "(api.recipient_hash_key is unset)",
            type_="urn:dispatcher:problem:recipient-search-disabled",
        )
    value = f.recipient.strip()
    if "@" in value:
        channel = ChannelKind.EMAIL
    elif value.startswith("+"):
        channel = ChannelKind.SMS
    else:
        raise ApiProblem(
            422,
            "recipient must be an email address or an E.164 number; "
            "use endpoint= for webhook endpoints",
        )
    try:
        normalised = check_recipient(channel, value)
    except InvalidRecipientError as exc:
        raise ApiProblem(422, f"recipient: {exc}") from None
    return recipient_digest(key, channel, normalised)


@router.get("", response_model=Page[resources.Delivery])
async def list_deliveries(
    reader: AuditReader, q: Annotated[DeliveryQuery, Query()]
) -> Page[resources.Delivery]:
    """Deliveries newest first (by creation), filtered."""
    filters = q.active()
    after = time_keyset(reader.decode(q.cursor, "deliveries", filters), UUID)
    digest = _recipient_hash(reader, q)
    async with reader.connect() as conn:
        rows = await queries.deliveries_page(conn, q, digest, after, q.limit)
    page, iterator, done = paginate(
        rows,
        q.limit,
        lambda r: reader.encode(
            "deliveries", filters, (r.created_at.isoformat(), r.id)
        ),
    )
    await reader.disclosed([r.id for r in page])
    return Page(
        data=[resources.delivery(r, reader.sees_pii) for r in page],
        iterator=iterator,
        done=done,
    )


@router.get("/count", response_model=resources.Count)
async def count_deliveries(
    reader: AuditReader, q: Annotated[DeliveryFilters, Query()]
) -> resources.Count:
    """How many deliveries match: exact up to a bound, the planner's estimate above it."""
    digest = _recipient_hash(reader, q)
    async with reader.connect() as conn:
        count, approximated = await queries.count_deliveries(
            conn, q, digest, reader.state["limits"].exact_count_limit
        )
    return resources.Count(count=count, approximated=approximated)


@router.get("/{delivery_id}", response_model=resources.DeliveryDetail)
async def get_delivery(
    reader: AuditReader, delivery_id: UUID
) -> resources.DeliveryDetail:
    """One delivery with its attempt timeline."""
    async with reader.connect() as conn:
        row = await queries.delivery(conn, delivery_id)
        if row is None:
            raise ApiProblem(404, "no delivery with this id")
        attempts = await queries.attempts_of(conn, [delivery_id])
    pii = reader.sees_pii
    detail = resources.delivery_detail(
        row, [resources.attempt(a, pii) for a in attempts[delivery_id]], pii
    )
    await reader.disclosed(
        [delivery_id], event_id=row.event_id, delivery_id=delivery_id
    )
    return detail


@router.get("/{delivery_id}/attempts", response_model=Page[resources.Attempt])
async def list_attempts(
    reader: AuditReader, delivery_id: UUID, q: Annotated[Paging, Query()]
) -> Page[resources.Attempt]:
    """A delivery's attempts, oldest first."""
    filters = {"delivery_id": str(delivery_id)}
    position = reader.decode(q.cursor, "attempts", filters)
    try:
        after = None if position is None else int(position[0])
    except (ValueError, IndexError):
        raise ApiProblem(
            400, "the cursor is not valid; start again without it"
        ) from None
    async with reader.connect() as conn:
        if await queries.delivery(conn, delivery_id) is None:
            raise ApiProblem(404, "no delivery with this id")
        rows = await queries.attempts_page(conn, delivery_id, after, q.limit)
    page, iterator, done = paginate(
        rows, q.limit, lambda r: reader.encode("attempts", filters, (r.id,))
    )
    pii = reader.sees_pii
    if pii and any(r.error_message for r in page):
        await reader.disclosed([r.id for r in page], delivery_id=delivery_id)
    return Page(
        data=[resources.attempt(r, pii) for r in page], iterator=iterator, done=done
    )
