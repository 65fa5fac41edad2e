"""A replay runner's lease and the replay's counters: claim, renew, settle, finish.

A replay is a durable job like a delivery: a runner holds it by a lease (``lease_owner``,
``lease_expires_at``) and any replica takes it over once the lease has expired. The
requeue step (``outbox/requeue.py``) checks the same lease, so two runners never requeue
the same item.
"""

from uuid import UUID

from dispatcher.db.sql import Executor, Statement
from dispatcher.outbox.replays import COLUMNS, ReplayRow, replay_row

#: Take an active replay whose lease is free or expired (one named, or the oldest).
_CLAIM = Statement.compile(
    f"""
    UPDATE replays
    SET lease_owner = :owner, lease_expires_at = now() + make_interval(secs => :lease),
        status = CASE WHEN status = 'planned' THEN 'running' ELSE status END,
        updated_at = now()
    WHERE id = (
        SELECT id FROM replays
        WHERE status IN ('planned', 'running', 'paused')
          AND (lease_expires_at IS NULL OR lease_expires_at < now()
               OR lease_owner = :owner)
          AND (CAST(:only AS uuid) IS NULL OR id = CAST(:only AS uuid))
        ORDER BY created_at
        LIMIT 1
        FOR UPDATE SKIP LOCKED
    )
    RETURNING {COLUMNS}
    """  # noqa: S608 - constant SQL fragments; values are bound
)

#: Extend a held lease and set running/paused; nothing when cancelled or taken over.
_RENEW = Statement.compile(
    """
    UPDATE replays
    SET lease_expires_at = now() + make_interval(secs => :lease), status = :status,
        updated_at = now()
    WHERE id = :id AND lease_owner = :owner AND status IN ('running', 'paused')
    RETURNING id
    """
)

#: Requeued items whose delivery reached an outcome: delivered, or dead again (or taken
#: by a later replay, which means it died again first).
_SETTLE = Statement.compile(
    f"""
    WITH s AS (
        UPDATE replay_items AS i
        SET state = CASE WHEN d.status = 'delivered' AND d.replay_id = i.replay_id
                         THEN 'delivered' ELSE 'failed_again' END,
            decided_at = now()
        FROM deliveries AS d
        WHERE i.replay_id = :id AND i.state = 'requeued' AND d.id = i.delivery_id
          AND (d.replay_id IS DISTINCT FROM i.replay_id
               OR d.status IN ('delivered', 'dead', 'discarded'))
        RETURNING i.state
    )
    UPDATE replays
    SET delivered = delivered + (SELECT count(*) FROM s WHERE state = 'delivered'),
        failed_again = failed_again + (SELECT count(*) FROM s WHERE state = 'failed_again'),
        updated_at = now()
    WHERE id = :id
    RETURNING {COLUMNS},
              (SELECT count(*) FROM replay_items
               WHERE replay_id = :id AND state = 'waiting') AS waiting
    """  # noqa: S608 - constant SQL fragments; values are bound
)

#: Done once nothing waits and nothing requeued is still on its way.
_FINISH = Statement.compile(
    """
    WITH done AS (
        UPDATE replays
        SET status = 'done', finished_at = now(), lease_owner = NULL,
            lease_expires_at = NULL, updated_at = now()
        WHERE id = :id AND lease_owner = :owner AND status IN ('running', 'paused')
          AND NOT EXISTS (SELECT 1 FROM replay_items
                          WHERE replay_id = :id AND state IN ('waiting', 'requeued'))
        RETURNING id, total, requeued, delivered, failed_again, skipped
    )
    INSERT INTO audit_log (kind, detail)
    SELECT 'replay.finished',
           jsonb_build_object('replay_id', CAST(id AS text), 'total', total,
                              'requeued', requeued, 'delivered', delivered,
                              'failed_again', failed_again, 'skipped', skipped)
    FROM done
    RETURNING id
    """
)


async def claim(
    conn: Executor, *, owner: str, lease_seconds: float, only: UUID | None = None
) -> ReplayRow | None:
    """Lease the oldest active replay that nobody holds (or ``only`` that one)."""
    values = {"owner": owner, "lease": lease_seconds, "only": only}
    rows = await _CLAIM.fetch(conn, **values)
    return replay_row(rows[0]) if rows else None


async def renew(
    conn: Executor, replay_id: UUID, *, owner: str, lease_seconds: float, paused: bool
) -> bool:
    """Extend the lease; False when the replay was cancelled or taken over."""
    values = {
        "id": replay_id,
        "owner": owner,
        "lease": lease_seconds,
        "status": "paused" if paused else "running",
    }
    return bool(await _RENEW.fetch(conn, **values))


async def settle(conn: Executor, replay_id: UUID) -> tuple[ReplayRow, int] | None:
    """Count the outcomes of requeued deliveries; the replay and how many still wait."""
    rows = await _SETTLE.fetch(conn, id=replay_id)
    return (replay_row(rows[0]), rows[0]["waiting"]) if rows else None


async def finish(conn: Executor, replay_id: UUID, *, owner: str) -> bool:
    """Mark the replay done if nothing waits or is on its way; True if it was."""
    values = {"id": replay_id, "owner": owner}
    return bool(await _FINISH.fetch(conn, **values))
