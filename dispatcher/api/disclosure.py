"""The audit entry written whenever the API shows unmasked PII: no disclosure without a
record of who saw what, when and through which route."""

from collections.abc import Sequence
from typing import Any
from uuid import UUID

from sqlalchemy import insert, text
from sqlalchemy.ext.asyncio import AsyncEngine

from dispatcher.api.auth import Principal
from dispatcher.db.engine import wrap_db_errors
from dispatcher.db.models import AuditEntry
from dispatcher.db.states import AuditKind

#: Most ids one entry lists; a larger page records the count and the first ones.
MAX_IDS = 250


async def record_disclosure(
    engine: AsyncEngine,
    principal: Principal,
    route: str,
    ids: Sequence[UUID | int | str],
    *,
    event_id: UUID | None = None,
    delivery_id: UUID | None = None,
) -> None:
    """Append one ``api.pii_disclosed`` entry; it is committed before the response leaves.

    Raises:
        StorageUnavailable: then the caller answers 503 and shows nothing.
    """
    detail: dict[str, Any] = {
        "token": principal.name,
        "route": route,
        "count": len(ids),
        "ids": [str(i) for i in ids[:MAX_IDS]],
    }
    with wrap_db_errors():
        async with engine.begin() as conn:
            # The API's sessions are read-only by default; this is its one write.
            await conn.execute(text("SET TRANSACTION READ WRITE"))
            await conn.execute(
                insert(AuditEntry).values(
                    kind=AuditKind.PII_DISCLOSED.value,
                    event_id=event_id,
                    delivery_id=delivery_id,
                    detail=detail,
                )
            )
