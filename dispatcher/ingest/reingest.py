"""Replaying rejected messages: their stored bodies read again (``reader.py``) and stored
by ingest's own ``persist_batch`` once the cause is fixed (an endpoint configured, a
publisher bug fixed).

The plan reads the selected messages without writing and says what would now be stored,
what is already stored under its event_id, and what would still fail and why; the run
takes exactly the planned ids. An accepted message gets ``replayed_at`` and the event it
became and is never offered again; an event already stored is not stored twice (ingest's
idempotency by event_id). One that still fails stays rejected with its new reason, the
old one kept in ``earlier_reasons``. Every message gets a ``message.replayed`` audit
entry, and each run one more with who, why, the filters and the counts.
"""

import json
from collections import Counter
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol
from uuid import UUID

from dispatcher.db.engine import wrap_db_errors
from dispatcher.db.sql import Executor, Statement
from dispatcher.errors import StorageConflict
from dispatcher.events.rejection import Rejection, RejectReason
from dispatcher.ingest.incoming import Accepted, Incoming, Source
from dispatcher.ingest.reader import MessageReader
from dispatcher.ingest.rejected import MATCH, RejectedFilter
from dispatcher.ingest.store import persist_batch

#: Messages read, and written, per transaction.
CHUNK = 500

_COLUMNS = """r.id, r.reason, r.message, r.body, r.body_size, r.headers,
              r.routing_key, r.message_id"""

_PLANNED = Statement.compile(
    f"""
    SELECT {_COLUMNS} FROM rejected_messages AS r
    WHERE {MATCH} AND r.id > :after ORDER BY r.id LIMIT :chunk
    """  # noqa: S608 - constant SQL fragments; values are bound
)

#: Still rejected and not being replayed by someone else right now.
_LOCKED = Statement.compile(
    f"""
    SELECT {_COLUMNS} FROM rejected_messages AS r
    WHERE r.id = ANY(CAST(:ids AS bigint[])) AND r.replayed_at IS NULL
    ORDER BY r.id FOR UPDATE SKIP LOCKED
    """  # noqa: S608 - constant SQL fragments; values are bound
)

_STORED = Statement.compile(
    "SELECT id, digest FROM events WHERE id = ANY(CAST(:ids AS uuid[]))"
)

_MARK_ACCEPTED = Statement.compile(
    """
    WITH done AS (
        UPDATE rejected_messages AS r
        SET replayed_at = now(), replayed_event_id = a.event_id
        FROM unnest(CAST(:ids AS bigint[]), CAST(:event_ids AS uuid[]),
                    CAST(:outcomes AS text[])) AS a(id, event_id, outcome)
        WHERE r.id = a.id
        RETURNING r.id, r.reason, a.event_id, a.outcome
    )
    INSERT INTO audit_log (kind, event_id, detail)
    SELECT 'message.replayed', event_id,
           jsonb_build_object('rejected_id', id, 'outcome', outcome, 'old_reason', reason,
                              'by', CAST(:by AS text), 'reason', CAST(:reason AS text))
    FROM done
    """
)

_MARK_STILL = Statement.compile(
    """
    WITH n AS (
        SELECT * FROM unnest(CAST(:ids AS bigint[]), CAST(:reasons AS text[]),
                             CAST(:messages AS text[])) AS n(id, reason, message)
    ), old AS (
        SELECT r.id, r.reason, r.message FROM rejected_messages AS r JOIN n USING (id)
    ), changed AS (
        UPDATE rejected_messages AS r
        SET reason = n.reason, message = n.message,
            earlier_reasons = r.earlier_reasons || jsonb_build_array(jsonb_build_object(
                'reason', r.reason, 'message', r.message, 'until', now(),
                'replay_reason', CAST(:reason AS text)))
        FROM n
        WHERE r.id = n.id AND (r.reason, r.message) IS DISTINCT FROM (n.reason, n.message)
    )
    INSERT INTO audit_log (kind, event_id, detail)
    SELECT 'message.replayed', NULL,
           jsonb_build_object('rejected_id', n.id, 'outcome', 'still_rejected',
                              'old_reason', old.reason, 'new_reason', n.reason,
                              'by', CAST(:by AS text), 'reason', CAST(:reason AS text))
    FROM n JOIN old USING (id)
    """
)

_SUMMARY = Statement.compile(
    """
    INSERT INTO audit_log (kind, detail)
    VALUES ('message.replayed',
            jsonb_build_object('by', CAST(:by AS text), 'reason', CAST(:reason AS text),
                               'filters', CAST(:filters AS jsonb),
                               'counts', CAST(:counts AS jsonb),
                               'count', CAST(:count AS integer)))
    """
)


class Outcome(StrEnum):
    """What reading a rejected message again came to."""

    #: Now a valid event, stored with its deliveries.
    STORED = "stored"
    #: Valid, and the same event is already stored (by a corrected publish): kept once.
    DUPLICATE = "duplicate"
    #: Valid, but another event is stored under its event_id: the stored one is kept
    #: (ingest's rule), the conflict audited.
    CONFLICT = "conflict"
    #: Still not a valid event: stays rejected with the new reason.
    STILL_REJECTED = "still_rejected"


class Transactional(Executor, Protocol):
    """An asyncpg connection: a run commits chunk by chunk."""

    def transaction(self) -> AbstractAsyncContextManager[Any]: ...


class _Keyed(Protocol):
    def __getitem__(self, key: str, /) -> Any: ...


@dataclass(slots=True)
class ReplayPlan:
    """What a replay of the selected messages would do now."""

    #: Exactly what a run takes, in order.
    ids: list[int] = field(default_factory=list)
    #: The reasons they are rejected for now.
    by_reason: Counter[str] = field(default_factory=Counter)
    outcomes: Counter[Outcome] = field(default_factory=Counter)
    #: The reasons of those that would still fail.
    still_failing: Counter[str] = field(default_factory=Counter)

    @property
    def count(self) -> int:
        return len(self.ids)


@dataclass(slots=True)
class ReplayResult:
    """What a run did (``gone``: replayed by someone else meanwhile)."""

    outcomes: Counter[Outcome] = field(default_factory=Counter)
    still_failing: Counter[str] = field(default_factory=Counter)
    gone: int = 0


def _read(reader: MessageReader, row: _Keyed) -> Incoming:
    body: bytes = row["body"]
    headers = row["headers"]
    if isinstance(headers, str):
        headers = json.loads(headers)
    item = reader.read(
        body, Source.REJECTED_REPLAY, row["routing_key"], row["message_id"], headers
    )
    if len(body) < row["body_size"]:
        item.outcome = Rejection(
            RejectReason.TOO_LARGE,
            f"only the first {len(body)} of {row['body_size']} bytes were kept: "
            "publish the message again",
        )
    return item


async def _judge(conn: Executor, items: Sequence[Incoming]) -> list[Outcome]:
    """Each item's outcome, as ``persist_batch`` will decide it (same id, same digest)."""
    ids = [
        i.outcome.parsed.event.event_id
        for i in items
        if isinstance(i.outcome, Accepted)
    ]
    seen: dict[UUID, bytes] = {}
    if ids:
        seen = {r["id"]: r["digest"] for r in await _STORED.fetch(conn, ids=ids)}
    out = []
    for item in items:
        if not isinstance(item.outcome, Accepted):
            out.append(Outcome.STILL_REJECTED)
            continue
        parsed = item.outcome.parsed
        event_id = parsed.event.event_id
        if event_id not in seen:
            seen[event_id] = parsed.digest
            out.append(Outcome.STORED)
        elif seen[event_id] == parsed.digest:
            out.append(Outcome.DUPLICATE)
        else:
            out.append(Outcome.CONFLICT)
    return out


async def plan(
    conn: Executor, reader: MessageReader, where: RejectedFilter
) -> ReplayPlan:
    """Read every selected message again, without writing anything."""
    params = {**where.params(), "include_replayed": False, "chunk": CHUNK}
    result = ReplayPlan()
    after = 0
    while rows := await _PLANNED.fetch(conn, **params, after=after):
        after = rows[-1]["id"]
        items = [_read(reader, r) for r in rows]
        for row, item, outcome in zip(
            rows, items, await _judge(conn, items), strict=True
        ):
            result.ids.append(row["id"])
            result.by_reason[row["reason"]] += 1
            result.outcomes[outcome] += 1
            if isinstance(item.outcome, Rejection):
                result.still_failing[item.outcome.reason.value] += 1
    return result


async def replay(
    conn: Transactional,
    reader: MessageReader,
    ids: Sequence[int],
    *,
    by: str,
    reason: str,
    where: RejectedFilter,
    max_body_bytes: int,
    recipient_key: bytes | None,
) -> ReplayResult:
    """Replay exactly ``ids`` (a plan's), ``CHUNK`` per transaction; the caller holds
    none. Those replayed meanwhile by another run are counted ``gone``."""
    result = ReplayResult()
    for start in range(0, len(ids), CHUNK):
        chunk = list(ids[start : start + CHUNK])
        async with conn.transaction():
            rows = await _LOCKED.fetch(conn, ids=chunk)
            result.gone += len(chunk) - len(rows)
            items = [_read(reader, r) for r in rows]
            outcomes = await _judge(conn, items)
            await _store(conn, items, outcomes, max_body_bytes, recipient_key)
            await _mark(conn, rows, items, outcomes, by=by, reason=reason)
        for item, outcome in zip(items, outcomes, strict=True):
            result.outcomes[outcome] += 1
            if isinstance(item.outcome, Rejection):
                result.still_failing[item.outcome.reason.value] += 1
    counts = {o.value: n for o, n in result.outcomes.items()}
    await _SUMMARY.fetch(
        conn,
        by=by,
        reason=reason,
        filters=json.dumps(where.to_json()),
        counts=json.dumps({**counts, "gone": result.gone}),
        count=len(ids),
    )
    return result


async def _store(
    conn: Transactional,
    items: Sequence[Incoming],
    outcomes: list[Outcome],
    max_body_bytes: int,
    recipient_key: bytes | None,
) -> None:
    """Store the valid ones as ingest does; one PostgreSQL refuses (it validated) stays
    rejected as ``storage_rejected``, the others are stored (one by one, then)."""
    accepted = [i for i in items if isinstance(i.outcome, Accepted)]
    if not accepted:
        return
    try:
        await _persist(conn, accepted, max_body_bytes, recipient_key)
    except StorageConflict:
        for item in accepted:
            try:
                await _persist(conn, [item], max_body_bytes, recipient_key)
            except StorageConflict as exc:
                item.outcome = Rejection(RejectReason.STORAGE_REJECTED, str(exc))
                outcomes[items.index(item)] = Outcome.STILL_REJECTED


async def _persist(
    conn: Transactional,
    items: list[Incoming],
    max_body_bytes: int,
    recipient_key: bytes | None,
) -> None:
    with wrap_db_errors():
        async with conn.transaction():  # a savepoint: a refusal undoes only this
            await persist_batch(
                conn, items, max_body_bytes=max_body_bytes, recipient_key=recipient_key
            )


async def _mark(
    conn: Executor,
    rows: Sequence[_Keyed],
    items: Sequence[Incoming],
    outcomes: Sequence[Outcome],
    *,
    by: str,
    reason: str,
) -> None:
    """Accepted ones: replayed, linked to their event. The others: their new reason."""
    done: dict[str, list[Any]] = {"ids": [], "event_ids": [], "outcomes": []}
    still: dict[str, list[Any]] = {"ids": [], "reasons": [], "messages": []}
    for row, item, outcome in zip(rows, items, outcomes, strict=True):
        if isinstance(item.outcome, Accepted):
            done["ids"].append(row["id"])
            done["event_ids"].append(item.outcome.parsed.event.event_id)
            done["outcomes"].append(outcome.value)
        else:
            still["ids"].append(row["id"])
            still["reasons"].append(item.outcome.reason.value)
            still["messages"].append(item.outcome.message)
    if done["ids"]:
        await _MARK_ACCEPTED.fetch(conn, **done, by=by, reason=reason)
    if still["ids"]:
        await _MARK_STILL.fetch(conn, **still, by=by, reason=reason)
