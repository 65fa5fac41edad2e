"""Reading rejected messages: the filter ``dispatcher rejected list|show|replay`` share,
the listing with counts by reason, and one message. Read only (``reingest.py`` writes).

One SQL fragment matches the filter with bound parameters only; an absent filter is an
empty array or NULL, so the statement is the same whichever filters are set.
"""

import json
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

from dispatcher.db.sql import Executor, Statement, from_row

#: Rejected messages the filter selects (``r`` rejected_messages).
MATCH = """
    (cardinality(CAST(:reasons AS text[])) = 0
     OR r.reason = ANY(CAST(:reasons AS text[])))
    AND (CAST(:received_from AS timestamptz) IS NULL
         OR r.received_at >= CAST(:received_from AS timestamptz))
    AND (CAST(:received_until AS timestamptz) IS NULL
         OR r.received_at <= CAST(:received_until AS timestamptz))
    AND (cardinality(CAST(:ids AS bigint[])) = 0 OR r.id = ANY(CAST(:ids AS bigint[])))
    AND (CAST(:include_replayed AS boolean) OR r.replayed_at IS NULL)
"""

_COLUMNS = """r.id, r.received_at, r.source, r.reason, r.message, r.body_size,
              r.routing_key, r.message_id, r.replayed_at, r.replayed_event_id"""

_COUNT = Statement.compile(
    f"SELECT r.reason, count(*) AS n FROM rejected_messages AS r WHERE {MATCH} GROUP BY 1"  # noqa: S608 - constant SQL fragments; values are bound
)

_PAGE = Statement.compile(
    f"""
    SELECT {_COLUMNS} FROM rejected_messages AS r WHERE {MATCH}
    ORDER BY r.received_at, r.id LIMIT :limit
    """  # noqa: S608 - constant SQL fragments; values are bound
)

_ONE = Statement.compile(
    f"""
    SELECT {_COLUMNS}, r.body, r.headers, r.earlier_reasons
    FROM rejected_messages AS r WHERE r.id = :id
    """  # noqa: S608 - constant SQL fragments; values are bound
)


@dataclass(frozen=True, slots=True, kw_only=True)
class RejectedFilter:
    """Which rejected messages: every field narrows; none set selects all still rejected."""

    reasons: tuple[str, ...] = ()
    received_from: datetime | None = None
    received_until: datetime | None = None
    ids: tuple[int, ...] = ()
    #: Also those a replay already turned into events (never replayed again).
    include_replayed: bool = False

    def is_empty(self) -> bool:
        return not (
            self.reasons or self.received_from or self.received_until or self.ids
        )

    def params(self) -> dict[str, Any]:
        return {
            "reasons": list(self.reasons),
            "received_from": self.received_from,
            "received_until": self.received_until,
            "ids": list(self.ids),
            "include_replayed": self.include_replayed,
        }

    def to_json(self) -> dict[str, Any]:
        """The filters that are set, JSON-ready (for the audit log)."""
        doc = {
            "reasons": list(self.reasons),
            "received_from": self.received_from and self.received_from.isoformat(),
            "received_until": self.received_until and self.received_until.isoformat(),
            "ids": list(self.ids),
        }
        return {name: value for name, value in doc.items() if value}


@dataclass(frozen=True, slots=True)
class RejectedRow:
    """One rejected message without its body (health data)."""

    id: int
    received_at: datetime
    source: str
    reason: str
    #: The field and the rule, never the offending value.
    message: str
    body_size: int
    routing_key: str | None
    message_id: str | None
    replayed_at: datetime | None
    replayed_event_id: UUID | None


@dataclass(frozen=True, slots=True)
class RejectedDetail:
    """One rejected message with its stored body, headers and earlier reasons."""

    row: RejectedRow
    body: bytes
    headers: dict[str, Any]
    earlier_reasons: list[dict[str, Any]] = field(default_factory=list)

    @property
    def truncated(self) -> bool:
        """Only the first ``max_body_bytes`` were kept: it cannot be read again."""
        return len(self.body) < self.row.body_size


async def counts(conn: Executor, where: RejectedFilter) -> dict[str, int]:
    """How many the filter selects, by reason, most first."""
    tally: Counter[str] = Counter()
    for row in await _COUNT.fetch(conn, **where.params()):
        tally[row["reason"]] += row["n"]
    return dict(tally.most_common())


async def page(conn: Executor, where: RejectedFilter, limit: int) -> list[RejectedRow]:
    """The oldest ``limit`` the filter selects."""
    rows = await _PAGE.fetch(conn, **where.params(), limit=limit)
    return [from_row(RejectedRow, r) for r in rows]


async def one(conn: Executor, rejected_id: int) -> RejectedDetail | None:
    """One rejected message, body included; None if there is none with this id."""
    rows = await _ONE.fetch(conn, id=rejected_id)
    if not rows:
        return None
    r = rows[0]
    return RejectedDetail(
        from_row(RejectedRow, r),
        r["body"],
        _json(r["headers"]),
        _json(r["earlier_reasons"]),
    )


def _json(value: Any) -> Any:
    """asyncpg returns jsonb as text unless a codec is set."""
    return json.loads(value) if isinstance(value, str) else value
