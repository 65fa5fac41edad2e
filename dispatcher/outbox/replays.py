"""The SQL of replays: create one with its set frozen, lease it, requeue at a rate, settle
its counters, cancel it.

A replay is a durable job like a delivery: a runner holds it by a lease
(``lease_owner``, ``lease_expires_at``) and any replica takes it over once the lease has
expired. Every requeue statement locks the replay row and checks the lease and the status,
so a cancelled replay requeues nothing more, and two runners never requeue the same item:
an item goes from ``waiting`` to ``requeued`` once, and its delivery from ``dead`` to
``pending`` in the same statement.
"""

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from dispatcher.db.sql import Executor, Statement
from dispatcher.outbox.claims import OUTBOX_NOTIFY_CHANNEL
from dispatcher.outbox.dead import MATCH, DeadFilter, skip_reason

#: Replays requeue this many deliveries a second unless told otherwise.
DEFAULT_RATE = 10.0

_COLUMNS = """id, created_at, created_by, reason, filters, status, total, requeued,
              delivered, failed_again, skipped, rate, max_age_seconds, finished_at,
              updated_at, lease_owner, lease_expires_at"""

_INSERT = Statement.compile(
    """
    INSERT INTO replays (id, created_by, reason, filters, rate, max_age_seconds)
    VALUES (:id, :by, :reason, CAST(:filters AS jsonb), :rate, :max_age)
    """
)

#: Freeze the set. A delivery already waiting in another replay is left out (the unique
#: partial index), so overlapping replays requeue it once.
_FREEZE = Statement.compile(
    f"""
    WITH items AS (
        INSERT INTO replay_items (replay_id, delivery_id)
        SELECT CAST(:id AS uuid), d.id
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
    RETURNING {_COLUMNS}
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

#: Requeue (or skip, with the reason) up to ``limit`` waiting items, most urgent first;
#: items of held channels and endpoints stay waiting. Requeued deliveries get a fresh
#: attempt budget and the replay's id; their history stays.
_REQUEUE = Statement.compile(
    f"""
    WITH r AS (
        SELECT id, max_age_seconds FROM replays
        WHERE id = :id AND lease_owner = :owner AND status IN ('running', 'paused')
        FOR UPDATE
    ), picked AS (
        SELECT i.delivery_id, d.channel, d.event_id,
               {skip_reason("r.max_age_seconds")}
                   AS skip
        FROM r
        JOIN replay_items AS i ON i.replay_id = r.id AND i.state = 'waiting'
        JOIN deliveries AS d ON d.id = i.delivery_id
        JOIN events AS e ON e.id = d.event_id
        WHERE NOT (d.channel = ANY(CAST(:held_channels AS text[])))
          AND NOT (d.channel = 'webhook'
                   AND d.recipient = ANY(CAST(:held_endpoints AS text[])))
        ORDER BY d.priority, d.dead_at
        LIMIT :limit
        FOR UPDATE OF i, d SKIP LOCKED
    ), requeued AS (
        UPDATE deliveries AS d
        SET status = 'pending', attempts = 0, next_attempt_at = now(), lease_token = NULL,
            lease_owner = NULL, replay_id = CAST(:id AS uuid), updated_at = now()
        FROM picked AS p
        WHERE d.id = p.delivery_id AND p.skip IS NULL AND d.status = 'dead'
        RETURNING d.id, d.event_id, d.channel
    ), items AS (
        UPDATE replay_items AS i
        SET state = CASE WHEN p.skip IS NULL THEN 'requeued' ELSE 'skipped' END,
            reason = p.skip, decided_at = now()
        FROM picked AS p
        WHERE i.replay_id = CAST(:id AS uuid) AND i.delivery_id = p.delivery_id
        RETURNING i.state
    ), audit AS (
        INSERT INTO audit_log (kind, event_id, delivery_id, detail)
        SELECT 'delivery.replayed', event_id, id,
               jsonb_build_object('replay_id', CAST(:id AS text), 'channel', channel)
        FROM requeued
    ), counted AS (
        UPDATE replays
        SET requeued = requeued + (SELECT count(*) FROM items WHERE state = 'requeued'),
            skipped = skipped + (SELECT count(*) FROM items WHERE state = 'skipped'),
            updated_at = now()
        WHERE id = (SELECT id FROM r)
        RETURNING id
    ), woken AS (
        SELECT pg_notify(:notify, c) FROM (SELECT DISTINCT channel AS c FROM requeued) AS x
    )
    SELECT (SELECT count(*) FROM r) AS held,
           (SELECT count(*) FROM items WHERE state = 'requeued') AS requeued,
           (SELECT count(*) FROM items WHERE state = 'skipped') AS skipped,
           (SELECT coalesce(jsonb_object_agg(channel, n), '{{}}')
            FROM (SELECT channel, count(*) AS n FROM requeued GROUP BY channel) AS c)
               AS by_channel,
           (SELECT count(*) FROM woken) AS woken,
           (SELECT count(*) FROM counted) AS counted
    """  # noqa: S608 - constant SQL fragments; values are bound
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
    RETURNING {_COLUMNS},
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
        RETURNING {_COLUMNS}
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

_GET = Statement.compile(f"SELECT {_COLUMNS} FROM replays WHERE id = :id")  # noqa: S608 - constant columns
_LIST = Statement.compile(
    f"""
    SELECT {_COLUMNS} FROM replays
    WHERE CAST(:before_at AS timestamptz) IS NULL
       OR (created_at, id) < (CAST(:before_at AS timestamptz), CAST(:before_id AS uuid))
    ORDER BY created_at DESC, id DESC
    LIMIT :limit
    """  # noqa: S608 - constant columns
)

#: The newest transition of each breaker (per replica) within the horizon, when it is
#: ``open``: what a replay pauses for (docs/operations.md, "Replaying dead letters").
_OPEN_BREAKERS = Statement.compile(
    """
    SELECT channel, provider FROM (
        SELECT DISTINCT ON (detail->>'owner', detail->>'channel', detail->>'provider')
               detail->>'channel' AS channel, detail->>'provider' AS provider,
               detail->>'new' AS state
        FROM audit_log
        WHERE kind = 'breaker.transition' AND at > now() - make_interval(secs => :horizon)
        ORDER BY detail->>'owner', detail->>'channel', detail->>'provider', at DESC
    ) AS latest
    WHERE state = 'open'
    """
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


@dataclass(frozen=True, slots=True)
class Step:
    """What one requeue statement did."""

    #: False when the replay was cancelled or its lease taken over: stop.
    held: bool
    requeued: int
    skipped: int
    #: Deliveries requeued, per channel.
    by_channel: dict[str, int]


def _row(r: Any) -> ReplayRow:
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


async def claim(
    conn: Executor, *, owner: str, lease_seconds: float, only: UUID | None = None
) -> ReplayRow | None:
    """Lease the oldest active replay that nobody holds (or ``only`` that one)."""
    values = {"owner": owner, "lease": lease_seconds, "only": only}
    rows = await _CLAIM.fetch(conn, **values)
    return _row(rows[0]) if rows else None


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


async def requeue(
    conn: Executor,
    replay_id: UUID,
    *,
    owner: str,
    limit: int,
    held_channels: Sequence[str] = (),
    held_endpoints: Sequence[str] = (),
) -> Step:
    """Requeue or skip up to ``limit`` waiting items, unless cancelled or not held."""
    values = {
        "id": replay_id,
        "owner": owner,
        "limit": limit,
        "held_channels": list(held_channels),
        "held_endpoints": list(held_endpoints),
        "notify": OUTBOX_NOTIFY_CHANNEL,
    }
    [row] = await _REQUEUE.fetch(conn, **values)
    return Step(
        bool(row["held"]), row["requeued"], row["skipped"], dict(row["by_channel"])
    )


async def settle(conn: Executor, replay_id: UUID) -> tuple[ReplayRow, int] | None:
    """Count the outcomes of requeued deliveries; the replay and how many still wait."""
    rows = await _SETTLE.fetch(conn, id=replay_id)
    return (_row(rows[0]), rows[0]["waiting"]) if rows else None


async def finish(conn: Executor, replay_id: UUID, *, owner: str) -> bool:
    """Mark the replay done if nothing waits or is on its way; True if it was."""
    values = {"id": replay_id, "owner": owner}
    return bool(await _FINISH.fetch(conn, **values))


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
    return _row(rows[0])


async def get(conn: Executor, replay_id: UUID) -> ReplayRow | None:
    rows = await _GET.fetch(conn, id=replay_id)
    return _row(rows[0]) if rows else None


async def recent(
    conn: Executor, limit: int = 50, before: tuple[datetime, UUID] | None = None
) -> list[ReplayRow]:
    """Replays newest first; ``before`` a ``(created_at, id)``: only older ones."""
    at, ident = before or (None, None)
    rows = await _LIST.fetch(conn, limit=limit, before_at=at, before_id=ident)
    return [_row(r) for r in rows]


async def open_breakers(
    conn: Executor, *, horizon_seconds: float
) -> list[tuple[str, str]]:
    """``(channel, provider)`` of breakers whose newest transition is to ``open``."""
    rows = await _OPEN_BREAKERS.fetch(conn, horizon=horizon_seconds)
    return [(r["channel"], r["provider"]) for r in rows]
