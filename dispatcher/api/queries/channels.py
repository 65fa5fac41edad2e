"""The channel snapshot's reads: run in the background (``api/snapshot.py``), never per
request."""

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from dispatcher.api.queries.keyset import Rec

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
