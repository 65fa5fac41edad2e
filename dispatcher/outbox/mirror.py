"""The SQL of the dead-letter mirror: which dead letters the broker has not confirmed yet."""

from collections.abc import Sequence
from typing import Any
from uuid import UUID

from dispatcher.outbox.store import DeadLettered, Executor

#: Oldest first. ``grace`` leaves the recorder's own publish of a fresh dead letter alone.
#: Run inside the sweep's transaction, the row locks keep other replicas' sweeps off these
#: rows until they are published and marked (SKIP LOCKED: those take the next ones).
_UNMIRRORED = """
    SELECT id, event_id, channel, attempts, last_error_class, last_error_message
    FROM deliveries
    WHERE status = 'dead' AND mirrored_at IS NULL
      AND dead_at <= now() - make_interval(secs => $1)
    ORDER BY dead_at
    LIMIT $2
    FOR UPDATE SKIP LOCKED
"""

#: Only rows still dead: one replayed meanwhile is not marked for its old death.
_MARK = """
    UPDATE deliveries SET mirrored_at = now()
    WHERE id = ANY($1::uuid[]) AND status = 'dead' AND mirrored_at IS NULL
"""


async def unmirrored(
    conn: Executor, *, grace_seconds: float, limit: int
) -> list[DeadLettered]:
    """Dead letters whose mirror message the broker has not confirmed, oldest first."""
    rows: list[Any] = await conn.fetch(_UNMIRRORED, grace_seconds, limit)
    return [DeadLettered(*row) for row in rows]


async def mark_mirrored(conn: Executor, ids: Sequence[UUID]) -> None:
    """Record that the broker confirmed these dead letters' mirror messages."""
    await conn.fetch(_MARK, list(ids))
