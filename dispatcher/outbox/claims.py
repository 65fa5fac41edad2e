"""The SQL of claims: lease due deliveries to this replica's workers.

A claim is a lease: ``status = in_flight`` and ``next_attempt_at`` = lease expiry, so a row
whose worker died becomes claimable again by the same query. Each claim draws a new
``lease_token``; outcomes are applied only where the token still matches (fencing,
``outbox/outcomes.py``), so a late result from an expired claim cannot overwrite the newer
one. Ingest's fast path leases new rows as they are inserted with the same fields
(``LEASE_EXPIRY``, ``ingest/store.py``).
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple
from uuid import UUID

from dispatcher.db.plans import INDEX_PLANS
from dispatcher.db.sql import Executor, Statement, from_row
from dispatcher.events.kinds import LEAST_URGENT, ChannelKind

#: NOTIFY channel the delivery workers LISTEN on; the payload is the channel kind.
OUTBOX_NOTIFY_CHANNEL = "dispatcher_outbox"


#: Session settings of the connection that runs the claims (a channel worker's): each
#: claim is planned once, generically, through the indexes whatever the statistics said
#: when the plan was made (``db/plans.py``). Planned afresh on every call, a claim spent
#: about as long planning as executing (docs/benchmarks.md, "Claims plan once"); a generic
#: plan left to PostgreSQL could scan the whole of ``deliveries`` and ``events`` for ever.
CLAIM_SESSION = INDEX_PLANS


def lease_expiry(seconds: str) -> str:
    """SQL: when a lease of ``seconds`` (an SQL expression) taken now runs out; a claim's
    and the fast path's insert's (``ingest/store.py``)."""
    return f"now() + make_interval(secs => {seconds})"


#: The end of every claim: lease what the ``chosen`` CTE (id, priority, next_attempt_at)
#: picked from ``candidates``, and return it most urgent first, oldest due first (the
#: order the lease overwrites, so it travels as ``ord``), each row with the claim's
#: ``report`` (considered, capped); one row of NULLs and the report when nothing was
#: leased, since the report matters then too. The chosen ids are an array walked in
#: order, each row found by primary key: a nested loop of one index probe per row, never
#: a join over a scan, and never a join of ``chosen`` with ``leased`` (with hash joins
#: ruled out, ``db/plans.py``, that would compare every pair).
_LEASE_CHOSEN = f"""
    , leased AS (
        UPDATE deliveries AS d
        SET status = 'in_flight', attempts = d.attempts + 1, lease_token = gen_random_uuid(),
            lease_owner = :owner, next_attempt_at = {lease_expiry(":lease")},
            updated_at = now()
        FROM unnest(ARRAY(SELECT id FROM chosen ORDER BY priority, next_attempt_at))
             WITH ORDINALITY AS c(id, ord),
             events AS e
        WHERE d.id = c.id AND e.id = d.event_id
        RETURNING d.id, d.event_id, d.recipient, d.attempts, d.lease_token, d.priority,
                  d.created_at, d.traceparent, d.replay_id, e.payload, c.ord
    )
    SELECT l.id, l.event_id, l.recipient, l.attempts, l.lease_token, l.priority,
           l.created_at, l.traceparent, l.replay_id, l.payload, r.considered, r.capped,
           r.capped_priorities
    FROM report AS r LEFT JOIN leased AS l ON true
    ORDER BY l.ord
    """  # noqa: S608 - constant SQL fragments; values are bound

#: Email and SMS: one ordered scan of the channel's due rows. One statement, so it is its
#: own transaction and one round trip per claim. Candidates beyond a recipient's room
#: under the cap are locked for the statement only and left as they were: not leased,
#: not reordered, due for the next claim, and their recipients reported as ``capped``.
_CHOOSE_BY_CHANNEL = """
    WITH candidates AS (
        SELECT id, recipient, priority, next_attempt_at FROM deliveries
        WHERE channel = :channel
          AND status IN ('pending', 'in_flight')
          AND next_attempt_at <= now()
          AND priority <= :max_priority
          AND NOT (recipient = ANY(CAST(:blocked AS text[])))
        ORDER BY priority, next_attempt_at
        LIMIT :limit
        FOR UPDATE SKIP LOCKED
    ), ranked AS (
        SELECT c.id, c.recipient, c.priority, c.next_attempt_at,
               CAST(:cap AS int) IS NULL
               OR c.nth <= CAST(:cap AS int) - coalesce(busy.n, 0) AS taken
        FROM (SELECT *, row_number() OVER (PARTITION BY recipient
                                           ORDER BY priority, next_attempt_at) AS nth
              FROM candidates) AS c
        LEFT JOIN unnest(CAST(:busy_recipients AS text[]), CAST(:busy_counts AS int[]))
             AS busy(recipient, n) USING (recipient)
    ), chosen AS (
        SELECT id, priority, next_attempt_at FROM ranked WHERE taken
    ), left_behind AS (
        SELECT recipient, min(priority) AS priority FROM ranked WHERE NOT taken
        GROUP BY recipient
    ), report AS (
        SELECT (SELECT count(*) FROM candidates) AS considered,
               ARRAY(SELECT recipient FROM left_behind ORDER BY recipient) AS capped,
               ARRAY(SELECT priority FROM left_behind ORDER BY recipient) AS capped_priorities
    )
    """
_CLAIM = Statement.compile(_CHOOSE_BY_CHANNEL + _LEASE_CHOSEN)

#: Webhooks: the recipient names an endpoint, and an endpoint may be blocked (breaker
#: open) or at its in-flight cap while thousands of its rows wait. The channel-wide claim
#: above would read that whole backlog on every claim and filter it out row by row; this
#: one lists the endpoints that have rows (a loose index scan: one index probe each), then
#: reads at most each unblocked endpoint's room from ``ix_deliveries_webhook_lanes``, and
#: one row more: whether the cap left any behind (``capped``; locked for the statement
#: only, like the rows over the cap above). Same order, lease and fencing; ``considered``
#: counts the rows taken under the caps.
_CHOOSE_BY_ENDPOINT = """
    WITH RECURSIVE present(recipient) AS (
        (SELECT recipient FROM deliveries
         WHERE channel = 'webhook' AND status IN ('pending', 'in_flight')
         ORDER BY recipient LIMIT 1)
        UNION ALL
        SELECT (SELECT d.recipient FROM deliveries AS d
                WHERE d.channel = 'webhook' AND d.status IN ('pending', 'in_flight')
                  AND d.recipient > p.recipient
                ORDER BY d.recipient LIMIT 1)
        FROM present AS p WHERE p.recipient IS NOT NULL
    ), lanes AS (
        SELECT p.recipient,
               least(CAST(:limit AS int),
                     coalesce(CAST(:cap AS int) - coalesce(busy.n, 0), CAST(:limit AS int)))
                   AS room
        FROM present AS p
        LEFT JOIN unnest(CAST(:busy_recipients AS text[]), CAST(:busy_counts AS int[]))
             AS busy(recipient, n) USING (recipient)
        WHERE p.recipient IS NOT NULL
          AND NOT (p.recipient = ANY(CAST(:blocked AS text[])))
    ), candidates AS (
        SELECT l.recipient, l.room, c.id, c.priority, c.next_attempt_at,
               row_number() OVER (PARTITION BY l.recipient
                                  ORDER BY c.priority, c.next_attempt_at) AS nth
        FROM lanes AS l CROSS JOIN LATERAL (
            SELECT id, priority, next_attempt_at FROM deliveries
            WHERE channel = 'webhook' AND status IN ('pending', 'in_flight')
              AND recipient = l.recipient
              AND priority <= CAST(:max_priority AS int)
              AND next_attempt_at <= now()
            ORDER BY priority, next_attempt_at
            LIMIT greatest(l.room, 0) + 1
            FOR UPDATE SKIP LOCKED
        ) AS c
    ), chosen AS (
        SELECT id, priority, next_attempt_at FROM candidates
        WHERE nth <= room
        ORDER BY priority, next_attempt_at
        LIMIT CAST(:limit AS int)
    ), left_behind AS (
        -- Left for the cap only where the cap, not the claim's limit, was the room: the
        -- one row past each such lane's room, the most urgent of those it left.
        SELECT recipient, priority FROM candidates
        WHERE nth > room AND room < CAST(:limit AS int)
    ), report AS (
        SELECT (SELECT count(*) FROM chosen) AS considered,
               ARRAY(SELECT recipient FROM left_behind ORDER BY recipient) AS capped,
               ARRAY(SELECT priority FROM left_behind ORDER BY recipient) AS capped_priorities
    )
    """
_CLAIM_LANES = Statement.compile(_CHOOSE_BY_ENDPOINT + _LEASE_CHOSEN)


@dataclass(frozen=True, slots=True)
class Claimed:
    """A delivery this worker holds a lease on."""

    id: UUID
    event_id: UUID
    recipient: str
    #: Attempts including this one.
    attempts: int
    lease_token: UUID
    priority: int
    created_at: datetime
    traceparent: str | None
    #: The replay that put this delivery back, None for one never dead-lettered.
    replay_id: UUID | None
    payload: dict[str, Any]


class Claim(NamedTuple):
    """What one claim leased, most urgent first, and what it left behind."""

    rows: list[Claimed]
    #: ``limit`` when there may be more due right now (the claim's window was full).
    considered: int
    #: Recipients whose due rows it left behind for their cap: nothing announces those
    #: rows again, so their next claim must come from their attempts ending. A recipient
    #: already at its cap is named whether or not its rows were read.
    capped: frozenset[str]
    #: Of those whose rows it read, the priority of the most urgent row it left behind
    #: (an endpoint already at its cap: the one row read of it).
    left: Mapping[str, int]


async def claim(
    conn: Executor,
    channel: str,
    *,
    limit: int,
    lease_seconds: float,
    owner: str,
    blocked: Sequence[str] = (),
    max_priority: int = LEAST_URGENT,
    cap: int | None = None,
    in_flight: Mapping[str, int] | None = None,
) -> Claim:
    """Lease up to ``limit`` due deliveries of one channel, most urgent first.

    With a ``cap``, no recipient gets more than ``cap`` minus its ``in_flight`` attempts;
    the rest stay due, untouched, and ``Claim.capped`` names their recipients. Webhook
    rows are claimed per endpoint (``_CLAIM_LANES``): the rows of ``blocked`` endpoints
    are not read at all, and of an endpoint at its cap one row only, for ``Claim.left``;
    channel-wide, a recipient at its cap is not read. Outside a transaction the lease
    is committed when this returns (asyncpg hands the rows over only after the
    statement's implicit commit).
    """
    busy = dict(in_flight or {})
    at_cap = frozenset(r for r, n in busy.items() if cap is not None and n >= cap)
    lanes = channel == ChannelKind.WEBHOOK
    args = {
        "channel": channel,
        "limit": limit,
        "cap": cap,
        "busy_recipients": list(busy),
        "busy_counts": list(busy.values()),
        # Per endpoint, one row of an endpoint at its cap is read (what it left behind);
        # channel-wide, its rows would take the places of other recipients' candidates.
        "blocked": list(blocked) if lanes else [*blocked, *at_cap],
        "max_priority": max_priority,
        "owner": owner,
        "lease": lease_seconds,
    }
    statement = _CLAIM_LANES if lanes else _CLAIM
    rows = await statement.fetch(conn, **args)
    report = rows[0]  # there is always one, with or without a leased row
    return Claim(
        [from_row(Claimed, row) for row in rows if row["id"] is not None],
        report["considered"],
        frozenset(report["capped"]) | at_cap,
        dict(zip(report["capped"], report["capped_priorities"], strict=True)),
    )


#: Rows no claim takes (their endpoint's breaker, or every provider's, is open on this
#: replica) that are past their severity's ``max_age``: leased like a claim, so that the
#: recorder dead-letters them through the one outcome path (``delivery/expiry.py``).
#: ``recipients`` NULL: every recipient of the channel.
_CHOOSE_EXPIRED = """
    WITH ages AS (
        SELECT * FROM unnest(CAST(:priorities AS int[]), CAST(:max_ages AS float8[]))
             AS a(priority, max_age)
    ), chosen AS (
        SELECT d.id, d.priority, d.next_attempt_at
        FROM deliveries AS d JOIN ages AS a ON a.priority = d.priority
        WHERE d.channel = :channel AND d.status = 'pending'
          AND (CAST(:recipients AS text[]) IS NULL
               OR d.recipient = ANY(CAST(:recipients AS text[])))
          AND d.created_at < now() - make_interval(secs => a.max_age)
        ORDER BY d.priority, d.next_attempt_at
        LIMIT :limit
        FOR UPDATE OF d SKIP LOCKED
    ), report AS (
        SELECT CAST(0 AS bigint) AS considered, CAST(ARRAY[] AS text[]) AS capped,
               CAST(ARRAY[] AS smallint[]) AS capped_priorities
    )
    """
_EXPIRED = Statement.compile(_CHOOSE_EXPIRED + _LEASE_CHOSEN)


async def claim_expired(
    conn: Executor,
    channel: str,
    *,
    recipients: Sequence[str] | None,
    max_ages: Mapping[int, float],
    limit: int,
    lease_seconds: float,
    owner: str,
) -> list[Claimed]:
    """Lease up to ``limit`` pending rows of ``recipients`` (None: all) of one channel
    that are older than the ``max_ages`` of their priority, most urgent first."""
    rows = await _EXPIRED.fetch(
        conn,
        channel=channel,
        recipients=None if recipients is None else list(recipients),
        priorities=list(max_ages),
        max_ages=list(max_ages.values()),
        limit=limit,
        owner=owner,
        lease=lease_seconds,
    )
    return [from_row(Claimed, row) for row in rows if row["id"] is not None]
