"""Status queries: deliveries per channel and status, and the breakers' last transitions."""

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from dispatcher.db.sql import from_row
from dispatcher.db.states import AuditKind

_QUEUE_STATUS = text(
    """
    SELECT channel, status, count(*) AS count,
           min(next_attempt_at) FILTER (WHERE status = 'pending') AS next_due
    FROM deliveries GROUP BY channel, status ORDER BY channel, status
    """
)

_BREAKER_STATUS = text(
    """
    SELECT DISTINCT ON (detail->>'owner', detail->>'channel', detail->>'provider')
           at, detail->>'owner' AS owner, detail->>'channel' AS channel,
           detail->>'provider' AS provider, detail->>'new' AS state, detail->>'reason' AS reason
    FROM audit_log
    WHERE kind = :kind AND at > now() - make_interval(secs => :horizon)
    ORDER BY detail->>'owner', detail->>'channel', detail->>'provider', at DESC
    """
)


@dataclass(frozen=True, slots=True)
class QueueCount:
    channel: str
    status: str
    count: int
    next_due: datetime | None


@dataclass(frozen=True, slots=True)
class BreakerStatus:
    """The last recorded transition of one breaker in one replica."""

    at: datetime
    owner: str
    channel: str
    provider: str
    state: str
    reason: str


async def queue_status(conn: AsyncConnection) -> list[QueueCount]:
    """Deliveries per channel and status, with the earliest due pending one."""
    rows = (await conn.execute(_QUEUE_STATUS)).mappings()
    return [from_row(QueueCount, row) for row in rows]


async def breaker_status(
    conn: AsyncConnection, *, horizon_seconds: float = 7 * 86400
) -> list[BreakerStatus]:
    """The latest state of every breaker that changed state within the horizon.

    Breakers live in each replica's memory; their transitions are audited, so the newest
    transition per replica and provider is that breaker's state (a breaker with no entry
    has been closed since its replica started).
    """
    rows = (
        await conn.execute(
            _BREAKER_STATUS,
            {"kind": AuditKind.BREAKER_TRANSITION.value, "horizon": horizon_seconds},
        )
    ).mappings()
    return [from_row(BreakerStatus, row) for row in rows]
