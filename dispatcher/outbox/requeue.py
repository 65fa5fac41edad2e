"""The requeue step of a replay, and what pauses it.

Every requeue statement locks the replay row and checks the lease and the status, so a
cancelled replay requeues nothing more, and two runners never requeue the same item: an
item goes from ``waiting`` to ``requeued`` once, and its delivery from ``dead`` to
``pending`` in the same statement.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from uuid import UUID

from dispatcher.db.sql import Executor, Statement
from dispatcher.outbox.claims import OUTBOX_NOTIFY_CHANNEL
from dispatcher.outbox.dead import skip_reason

#: Requeue (or skip, with the reason) up to ``limit`` waiting items, most urgent first (the
#: order frozen with them: ``ix_replay_items_order`` reads only the batch);
#: items of held channels and endpoints stay waiting. Requeued deliveries get a fresh
#: attempt budget and the replay's id; their history stays. ``mirrored_at`` is cleared:
#: it marked a death the replay undid (reconcile removes that DLQ message).
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
        -- The replay's id as a constant, not r.id: then the index yields ordinal order
        -- and the scan stops after the batch (a join on r.id sorted the whole set).
        FROM replay_items AS i
        JOIN deliveries AS d ON d.id = i.delivery_id
        JOIN events AS e ON e.id = d.event_id
        CROSS JOIN r
        WHERE i.replay_id = CAST(:id AS uuid) AND i.state = 'waiting'
          AND NOT (d.channel = ANY(CAST(:held_channels AS text[])))
          AND NOT (d.channel = 'webhook'
                   AND d.recipient = ANY(CAST(:held_endpoints AS text[])))
        ORDER BY i.ordinal
        LIMIT :limit
        FOR UPDATE OF i, d SKIP LOCKED
    ), requeued AS (
        UPDATE deliveries AS d
        SET status = 'pending', attempts = 0, next_attempt_at = now(), lease_token = NULL,
            lease_owner = NULL, replay_id = CAST(:id AS uuid), mirrored_at = NULL,
            updated_at = now()
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
class Step:
    """What one requeue statement did."""

    #: False when the replay was cancelled or its lease taken over: stop.
    held: bool
    requeued: int
    skipped: int
    #: Deliveries requeued, per channel.
    by_channel: dict[str, int]


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


async def open_breakers(
    conn: Executor, *, horizon_seconds: float
) -> list[tuple[str, str]]:
    """``(channel, provider)`` of breakers whose newest transition is to ``open``."""
    rows = await _OPEN_BREAKERS.fetch(conn, horizon=horizon_seconds)
    return [(r["channel"], r["provider"]) for r in rows]
