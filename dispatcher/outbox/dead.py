"""Choosing dead letters: the filter every replay, discard and listing shares, the plan
that previews it, and discard.

One filter for the CLI and the API (``DeadFilter``), matched by one SQL fragment with
bound parameters only; an absent filter is an empty array or NULL, never left out, so the
statement is the same whichever filters are set.
"""

import json
from collections import Counter
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any
from uuid import UUID

from dispatcher.api.masking import mask_recipient
from dispatcher.db.sql import Executor, Statement

#: Dead letters the filter selects, as of ``as_of`` (``d`` deliveries, ``e`` events).
MATCH = """
    d.status = 'dead'
    AND d.dead_at <= CAST(:as_of AS timestamptz)
    AND (cardinality(CAST(:channels AS text[])) = 0
         OR d.channel = ANY(CAST(:channels AS text[])))
    AND (CAST(:type_prefix AS text) IS NULL
         OR starts_with(e.type, CAST(:type_prefix AS text)))
    AND (cardinality(CAST(:severities AS text[])) = 0
         OR e.severity = ANY(CAST(:severities AS text[])))
    AND (cardinality(CAST(:error_classes AS text[])) = 0
         OR d.last_error_class = ANY(CAST(:error_classes AS text[])))
    AND (cardinality(CAST(:endpoints AS text[])) = 0
         OR d.last_provider = ANY(CAST(:endpoints AS text[]))
         OR (d.channel = 'webhook' AND d.recipient = ANY(CAST(:endpoints AS text[]))))
    AND (CAST(:dead_from AS timestamptz) IS NULL
         OR d.dead_at >= CAST(:dead_from AS timestamptz))
    AND (CAST(:dead_until AS timestamptz) IS NULL
         OR d.dead_at <= CAST(:dead_until AS timestamptz))
    AND (cardinality(CAST(:event_ids AS uuid[])) = 0
         OR d.event_id = ANY(CAST(:event_ids AS uuid[])))
    AND (cardinality(CAST(:delivery_ids AS uuid[])) = 0
         OR d.id = ANY(CAST(:delivery_ids AS uuid[])))
    AND (CAST(:failures_of AS uuid) IS NULL
         OR d.id IN (SELECT delivery_id FROM replay_items
                     WHERE replay_id = CAST(:failures_of AS uuid)
                       AND state = 'failed_again'))
"""


def skip_reason(max_age: str) -> str:
    """SQL: why a frozen delivery is skipped when its turn comes (NULL: it is requeued);
    ``max_age`` is the SQL of the horizon in seconds (NULL: none)."""
    return f"""
    CASE
      WHEN d.status = 'delivered' THEN 'already_delivered'
      WHEN d.status = 'discarded' THEN 'discarded'
      WHEN d.status <> 'dead' THEN 'already_queued'
      WHEN EXISTS (SELECT 1 FROM deliveries AS o
                   WHERE o.event_id = d.event_id AND o.id <> d.id
                     AND lower(o.recipient) = lower(d.recipient)
                     AND o.status = 'delivered') THEN 'recipient_reached'
      WHEN {max_age} IS NOT NULL
           AND e.occurred_at < now() - make_interval(secs => {max_age})
        THEN 'too_old'
    END
    """  # noqa: S608 - constant SQL fragments; values are bound


#: Webhook deliveries are grouped by endpoint, the others by the provider that failed last.
ENDPOINT = "CASE WHEN d.channel = 'webhook' THEN d.recipient ELSE d.last_provider END"

_NOW = Statement.compile("SELECT clock_timestamp() AS now")

_PLAN = Statement.compile(
    f"""
    SELECT d.channel, d.last_error_class AS error_class, {ENDPOINT} AS endpoint,
           {skip_reason("CAST(:max_age AS float8)")} AS skip,
           EXISTS (SELECT 1 FROM replay_items AS i
                   WHERE i.delivery_id = d.id AND i.state = 'waiting') AS in_replay,
           count(*) AS n
    FROM deliveries AS d JOIN events AS e ON e.id = d.event_id
    WHERE {MATCH}
    GROUP BY 1, 2, 3, 4, 5
    """  # noqa: S608 - constant SQL fragments; values are bound
)

_SAMPLE = Statement.compile(
    f"""
    SELECT d.id, d.event_id, d.channel, d.recipient, {ENDPOINT} AS endpoint,
           d.last_error_class AS error_class, d.attempts, d.dead_at, e.type, e.severity
    FROM deliveries AS d JOIN events AS e ON e.id = d.event_id
    WHERE {MATCH}
    ORDER BY d.dead_at, d.id
    LIMIT :sample
    """  # noqa: S608 - constant SQL fragments; values are bound
)

_DISCARD = Statement.compile(
    f"""
    WITH gone AS (
        UPDATE deliveries AS d SET status = 'discarded', updated_at = now()
        FROM events AS e
        WHERE e.id = d.event_id AND {MATCH}
        RETURNING d.id, d.event_id, d.channel
    ), audit AS (
        INSERT INTO audit_log (kind, event_id, delivery_id, detail)
        SELECT 'delivery.discarded', event_id, id,
               jsonb_build_object('by', CAST(:by AS text), 'reason', CAST(:reason AS text),
                                  'channel', channel)
        FROM gone
        UNION ALL
        SELECT 'delivery.discarded', NULL, NULL,
               jsonb_build_object('by', CAST(:by AS text), 'reason', CAST(:reason AS text),
                                  'filters', CAST(:filters AS jsonb),
                                  'count', (SELECT count(*) FROM gone))
    )
    SELECT channel, count(*) AS n FROM gone GROUP BY channel
    """  # noqa: S608 - constant SQL fragments; values are bound
)


@dataclass(frozen=True, slots=True, kw_only=True)
class DeadFilter:
    """Which dead letters: every field narrows; none set selects every dead letter."""

    channels: tuple[str, ...] = ()
    #: Event type prefix: ``crisis.`` selects ``crisis.self_harm`` (a trailing ``*`` is cut).
    type_prefix: str | None = None
    severities: tuple[str, ...] = ()
    error_classes: tuple[str, ...] = ()
    #: Webhook endpoint names or email/SMS provider names (the last provider that failed).
    endpoints: tuple[str, ...] = ()
    dead_from: datetime | None = None
    dead_until: datetime | None = None
    event_ids: tuple[UUID, ...] = ()
    delivery_ids: tuple[UUID, ...] = ()
    #: Only the deliveries this replay requeued and that failed again.
    failures_of: UUID | None = None

    def is_empty(self) -> bool:
        return all(not getattr(self, f.name) for f in fields(self))

    def params(self, as_of: datetime) -> dict[str, Any]:
        prefix = self.type_prefix.rstrip("*") if self.type_prefix else None
        return {
            "as_of": as_of,
            "channels": list(self.channels),
            "type_prefix": prefix or None,
            "severities": list(self.severities),
            "error_classes": list(self.error_classes),
            "endpoints": list(self.endpoints),
            "dead_from": self.dead_from,
            "dead_until": self.dead_until,
            "event_ids": list(self.event_ids),
            "delivery_ids": list(self.delivery_ids),
            "failures_of": self.failures_of,
        }

    def to_json(self) -> dict[str, Any]:
        """The filters that are set, JSON-ready (for the replay row and the audit log)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if not value:
                continue
            if isinstance(value, tuple):
                out[f.name] = [str(v) for v in value]
            elif isinstance(value, datetime):
                out[f.name] = value.isoformat()
            else:
                out[f.name] = str(value)
        return out


@dataclass(frozen=True, slots=True)
class SampleRow:
    """One dead letter of a plan, its recipient masked."""

    id: UUID
    event_id: UUID
    channel: str
    recipient: str
    endpoint: str | None
    error_class: str | None
    attempts: int
    dead_at: datetime
    type: str
    severity: str


@dataclass(frozen=True, slots=True)
class Plan:
    """What a replay with these filters would do, as of ``as_of``."""

    as_of: datetime
    #: Dead letters the filters select: exactly what a replay created now would freeze,
    #: less ``in_other_replay``.
    count: int
    by_channel: dict[str, int]
    by_error_class: dict[str, int]
    by_endpoint: dict[str, int]
    #: Would be skipped, by reason (too_old, recipient_reached, ...).
    skips: dict[str, int]
    #: Already waiting in another replay: left out of a new one.
    in_other_replay: int
    sample: list[SampleRow] = field(default_factory=list)

    @property
    def to_requeue(self) -> int:
        return self.count - self.in_other_replay - sum(self.skips.values())

    def warnings(self) -> list[str]:
        notes = [f"{n} would be skipped: {reason}" for reason, n in self.skips.items()]
        if self.in_other_replay:
            notes.append(
                f"{self.in_other_replay} already wait in another replay: left out"
            )
        return notes


async def now(conn: Executor) -> datetime:
    """The database's clock: plans and creation compare it with ``dead_at``."""
    rows = await _NOW.fetch(conn)
    moment: datetime = rows[0]["now"]
    return moment


async def plan(
    conn: Executor,
    where: DeadFilter,
    *,
    max_age_seconds: float | None = None,
    sample: int = 10,
    as_of: datetime | None = None,
    masked: bool = True,
) -> Plan:
    """Count, group and sample the dead letters ``where`` selects (read only); the
    sample's recipients are masked unless ``masked`` is False (a PII reader)."""
    as_of = as_of or await now(conn)
    values = {**where.params(as_of), "max_age": max_age_seconds, "sample": sample}
    channel: Counter[str] = Counter()
    error: Counter[str] = Counter()
    endpoint: Counter[str] = Counter()
    skips: Counter[str] = Counter()
    in_other = 0
    for row in await _PLAN.fetch(conn, **values):
        n = row["n"]
        channel[row["channel"]] += n
        error[row["error_class"] or "none"] += n
        endpoint[row["endpoint"] or "none"] += n
        if row["in_replay"]:
            in_other += n
        elif row["skip"]:
            skips[row["skip"]] += n
    rows = await _SAMPLE.fetch(conn, **values) if sample else []
    return Plan(
        as_of,
        sum(channel.values()),
        dict(channel.most_common()),
        dict(error.most_common()),
        dict(endpoint.most_common()),
        dict(skips.most_common()),
        in_other,
        [
            SampleRow(
                r["id"],
                r["event_id"],
                r["channel"],
                mask_recipient(r["channel"], r["recipient"])
                if masked
                else r["recipient"],
                r["endpoint"],
                r["error_class"],
                r["attempts"],
                r["dead_at"],
                r["type"],
                r["severity"],
            )
            for r in rows
        ],
    )


async def discard(
    conn: Executor, where: DeadFilter, *, as_of: datetime, by: str, reason: str
) -> dict[str, int]:
    """Mark the selected dead letters ``discarded`` (kept), audit each; count by channel."""
    values = {
        **where.params(as_of),
        "by": by,
        "reason": reason,
        "filters": json.dumps(where.to_json()),
    }
    rows = await _DISCARD.fetch(conn, **values)
    return {r["channel"]: r["n"] for r in rows}
