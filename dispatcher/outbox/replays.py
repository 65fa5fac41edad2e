"""Replays as jobs: create one with its set frozen, read them, cancel one.

A replay is a row in ``replays`` with its deliveries listed in ``replay_items``, written
when it is created (the freeze), so what was planned is what runs. A runner drives it
(``outbox/replay_progress.py``: its lease and counters; ``outbox/requeue.py``: the
requeue step); a cancel waits for a running requeue statement (it holds the replay row),
so nothing is requeued after it commits.
"""

import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from dispatcher.db.sql import Executor, Statement
from dispatcher.outbox.dead import MATCH, DeadFilter

#: Replays requeue this many deliveries a second unless told otherwise.
DEFAULT_RATE = 10.0

#: A replay row's columns, in ``ReplayRow``'s order.
COLUMNS = """id, created_at, created_by, reason, filters, status, total, requeued,
              delivered, failed_again, skipped, rate, max_age_seconds, finished_at,
              updated_at, lease_owner, lease_expires_at"""

_INSERT = Statement.compile(
    """
    INSERT INTO replays (id, created_by, reason, filters, rate, max_age_seconds)
    VALUES (:id, :by, :reason, CAST(:filters AS jsonb), :rate, :max_age)
    """
)

#: Freeze the set, each item with its place (most urgent first: the requeue step's order).
#: A delivery already waiting in another replay is left out (the unique partial index),
#: so overlapping replays requeue it once.
_FREEZE = Statement.compile(
    f"""
    WITH items AS (
        INSERT INTO replay_items (replay_id, delivery_id, ordinal)
        SELECT CAST(:id AS uuid), d.id,
               row_number() OVER (ORDER BY d.priority, d.dead_at, d.id)
        FROM deliveries AS d JOIN events AS e ON e.id = d.event_id
        WHERE {MATCH}
        ON CONFLICT (delivery_id) WHERE state = 'waiting' DO NOTHING
        RETURNING delivery_id
    ), counted AS (
        UPDATE replays SET total = (SELECT count(*) FROM items)
        WHERE id = CAST(:id AS uuid)
        RETURNING total
    )
    INSERT INTO audit_log (kind, detail)
    SELECT 'replay.created',
           jsonb_build_object('replay_id', CAST(:id AS text), 'by', CAST(:by AS text),
                              'reason', CAST(:reason AS text),
                              'filters', CAST(:filters AS jsonb), 'total', total,
                              'rate', CAST(:rate AS float8),
                              'max_age_seconds', CAST(:max_age AS float8))
    FROM counted
    RETURNING (detail->>'total')::int AS total
    """  # noqa: S608 - constant SQL fragments; values are bound
)

_CANCEL = Statement.compile(
    """
    UPDATE replays
    SET status = 'cancelled', finished_at = now(), lease_owner = NULL,
        lease_expires_at = NULL, updated_at = now()
    WHERE id = :id AND status IN ('planned', 'running', 'paused')
    RETURNING id
    """
)

#: After ``_CANCEL`` in the same transaction: what still waited is skipped, not requeued.
_CANCEL_ITEMS = Statement.compile(
    f"""
    WITH i AS (
        UPDATE replay_items SET state = 'skipped', reason = 'cancelled', decided_at = now()
        WHERE replay_id = :id AND state = 'waiting'
        RETURNING 1
    ), r AS (
        UPDATE replays SET skipped = skipped + (SELECT count(*) FROM i)
        WHERE id = :id
        RETURNING {COLUMNS}
    ), audit AS (
        INSERT INTO audit_log (kind, detail)
        SELECT 'replay.cancelled',
               jsonb_build_object('replay_id', CAST(:id AS text), 'by', CAST(:by AS text),
                                  'requeued', requeued, 'skipped', skipped,
                                  'reason', CAST(:reason AS text))
        FROM r
    )
    SELECT * FROM r
    """  # noqa: S608 - constant SQL fragments; values are bound
)

_GET = Statement.compile(f"SELECT {COLUMNS} FROM replays WHERE id = :id")  # noqa: S608 - constant columns
_LIST = Statement.compile(
    f"""
    SELECT {COLUMNS} FROM replays
    WHERE CAST(:before_at AS timestamptz) IS NULL
       OR (created_at, id) < (CAST(:before_at AS timestamptz), CAST(:before_id AS uuid))
    ORDER BY created_at DESC, id DESC
    LIMIT :limit
    """  # noqa: S608 - constant columns
)


@dataclass(frozen=True, slots=True)
class ReplayRow:
    """A replay and its counters."""

    id: UUID
    created_at: datetime
    created_by: str
    reason: str
    filters: dict[str, Any]
    status: str
    total: int
    requeued: int
    delivered: int
    failed_again: int
    skipped: int
    rate: float
    max_age_seconds: float | None
    finished_at: datetime | None
    updated_at: datetime
    lease_owner: str | None
    lease_expires_at: datetime | None

    @property
    def final(self) -> bool:
        return self.status in {"cancelled", "done", "failed"}

    @property
    def pending(self) -> int:
        """Requeued deliveries without an outcome yet."""
        return self.requeued - self.delivered - self.failed_again


def replay_row(r: Any) -> ReplayRow:
    return ReplayRow(*(r[name] for name in ReplayRow.__dataclass_fields__))


async def create(
    conn: Executor,
    where: DeadFilter,
    *,
    as_of: datetime,
    by: str,
    reason: str,
    rate: float,
    max_age_seconds: float | None,
) -> tuple[UUID, int]:
    """Create a replay and freeze its set (the dead letters ``where`` selects as of
    ``as_of``); the id and the frozen count. Run it in a transaction."""
    replay_id = uuid.uuid4()
    values = {
        **where.params(as_of),
        "id": replay_id,
        "by": by,
        "reason": reason,
        "filters": json.dumps({**where.to_json(), "as_of": as_of.isoformat()}),
        "rate": rate,
        "max_age": max_age_seconds,
    }
    await _INSERT.fetch(conn, **values)
    rows = await _FREEZE.fetch(conn, **values)
    return replay_id, rows[0]["total"]


async def cancel(
    conn: Executor, replay_id: UUID, *, by: str, reason: str | None = None
) -> ReplayRow | None:
    """Cancel an active replay (run in a transaction); None if it was not active.

    Waits for a running requeue statement (it holds the replay row), so nothing is
    requeued after this commits; what was requeued stays requeued.
    """
    values = {"id": replay_id, "by": by, "reason": reason}
    if not await _CANCEL.fetch(conn, **values):
        return None
    rows = await _CANCEL_ITEMS.fetch(conn, **values)
    return replay_row(rows[0])


async def get(conn: Executor, replay_id: UUID) -> ReplayRow | None:
    rows = await _GET.fetch(conn, id=replay_id)
    return replay_row(rows[0]) if rows else None


async def recent(
    conn: Executor, limit: int = 50, before: tuple[datetime, UUID] | None = None
) -> list[ReplayRow]:
    """Replays newest first; ``before`` a ``(created_at, id)``: only older ones."""
    at, ident = before or (None, None)
    rows = await _LIST.fetch(conn, limit=limit, before_at=at, before_id=ident)
    return [replay_row(r) for r in rows]
