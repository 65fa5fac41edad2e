"""The SQL of the dead-letter mirror: which dead letters the broker has not confirmed yet."""

from collections.abc import Sequence
from datetime import datetime
from uuid import UUID

from dispatcher.db.sql import Executor, Statement, from_row
from dispatcher.db.states import DeliveryStatus
from dispatcher.outbox.outcomes import DeadLettered

#: Oldest first. ``grace`` leaves the recorder's own publish of a fresh dead letter alone.
#: Run inside the sweep's transaction, the row locks keep other replicas' sweeps off these
#: rows until they are published and marked (SKIP LOCKED: those take the next ones).
_UNMIRRORED = Statement.compile(
    """
    SELECT id, event_id, channel, attempts, last_error_class AS error_class,
           last_error_message AS error_message
    FROM deliveries
    WHERE status = :dead AND mirrored_at IS NULL
      AND dead_at <= now() - make_interval(secs => :grace)
    ORDER BY dead_at
    LIMIT :limit
    FOR UPDATE SKIP LOCKED
    """
)

#: Only rows still dead: one replayed meanwhile is not marked for its old death.
_MARK = Statement.compile(
    """
    UPDATE deliveries SET mirrored_at = now()
    WHERE id = ANY(CAST(:ids AS uuid[])) AND status = :dead AND mirrored_at IS NULL
    """
)


async def unmirrored(
    conn: Executor, *, grace_seconds: float, limit: int
) -> list[DeadLettered]:
    """Dead letters whose mirror message the broker has not confirmed, oldest first."""
    rows = await _UNMIRRORED.fetch(
        conn, dead=DeliveryStatus.DEAD.value, grace=grace_seconds, limit=limit
    )
    return [from_row(DeadLettered, row) for row in rows]


async def mark_mirrored(conn: Executor, ids: Sequence[UUID]) -> None:
    """Record that the broker confirmed these dead letters' mirror messages."""
    await _MARK.fetch(conn, ids=list(ids), dead=DeliveryStatus.DEAD.value)


#: Of these deliveries, the ones still dead (what a reconciled queue keeps).
_STILL_DEAD = Statement.compile(
    """
    SELECT id, event_id, channel, attempts, last_error_class AS error_class,
           last_error_message AS error_message
    FROM deliveries
    WHERE id = ANY(CAST(:ids AS uuid[])) AND status = :dead
    """
)

#: Dead letters of a channel that the queue lacks: not among ``present``, and published
#: (or dead) before ``since``, so one the mirror publishes meanwhile is not sent twice.
_ABSENT = Statement.compile(
    """
    SELECT id, event_id, channel, attempts, last_error_class AS error_class,
           last_error_message AS error_message
    FROM deliveries
    WHERE status = :dead AND channel = :channel
      AND NOT (id = ANY(CAST(:present AS uuid[])))
      AND coalesce(mirrored_at, dead_at) <= CAST(:since AS timestamptz)
    ORDER BY dead_at
    """
)


async def still_dead(conn: Executor, ids: Sequence[UUID]) -> list[DeadLettered]:
    """The deliveries among ``ids`` that are still dead."""
    rows = await _STILL_DEAD.fetch(conn, ids=list(ids), dead=DeliveryStatus.DEAD.value)
    return [from_row(DeadLettered, row) for row in rows]


async def absent(
    conn: Executor, *, channel: str, present: Sequence[UUID], since: datetime
) -> list[DeadLettered]:
    """The channel's dead letters not in ``present`` that were dead before ``since``."""
    rows = await _ABSENT.fetch(
        conn,
        dead=DeliveryStatus.DEAD.value,
        channel=channel,
        present=list(present),
        since=since,
    )
    return [from_row(DeadLettered, row) for row in rows]
