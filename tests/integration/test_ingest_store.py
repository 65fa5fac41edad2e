"""Batch persistence against real PostgreSQL: events, deliveries, audit, idempotency, isolation."""

import json
import uuid
from dataclasses import replace

import pytest
from sqlalchemy import text

from dispatcher.events.kinds import ChannelKind
from dispatcher.events.parse import ParsedEvent, parse_event
from dispatcher.events.rejection import Rejection, RejectReason
from dispatcher.events.routing import Route
from dispatcher.ingest.batcher import Batcher
from dispatcher.ingest.incoming import Accepted, Incoming
from dispatcher.testing import event_bytes

pytestmark = pytest.mark.postgres
LIMIT = 262_144


def incoming(
    body: bytes, routes: list[Route] | None = None, message_id: str | None = None
) -> Incoming:
    parsed = parse_event(body, max_bytes=LIMIT, endpoints={"safety-monitor"})
    outcome: Accepted | Rejection
    if isinstance(parsed, ParsedEvent):
        default = [Route(r.channel, r.to, None) for r in parsed.event.recipients]
        outcome = Accepted(parsed, default if routes is None else routes)
    else:
        outcome = parsed
    traceparent = "00-" + "a" * 32 + "-" + "b" * 16 + "-01"
    return Incoming(
        body=body,
        outcome=outcome,
        message_id=message_id,
        headers={"traceparent": traceparent},
    )


async def store(engine, items: list[Incoming]) -> list[str]:
    committed: list[str] = []

    async def on_commit(tokens: list[str]) -> None:
        committed.extend(tokens)

    batcher: Batcher[str] = Batcher(engine, on_commit, batch_max=1000, writers=1)
    await batcher.start()
    for n, item in enumerate(items):
        batcher._queue.append(_entry(item, str(n)))
    batcher._wakeup.set()
    await batcher.stop()
    return committed


def _entry(item: Incoming, token: str):
    import asyncio

    from dispatcher.ingest.batcher import _Entry

    return _Entry(item, token, asyncio.get_running_loop().create_future())


async def scalar(engine, sql: str, **params: object) -> object:
    async with engine.connect() as conn:
        return (await conn.execute(text(sql), params)).scalar()


RECIPIENTS = [
    {"channel": "email", "to": "team@example.org"},
    {"channel": "sms", "to": "+15551234567"},
    {"channel": "webhook", "to": "safety-monitor"},
]


async def test_event_deliveries_and_audit_in_one_batch(engine) -> None:
    """An event is stored with one pending delivery per recipient and a received audit entry."""
    body = event_bytes(recipients=RECIPIENTS, severity="high")
    event_id = json.loads(body)["event_id"]
    assert await store(engine, [incoming(body)]) == ["0"]
    assert (
        await scalar(engine, "SELECT count(*) FROM events WHERE id = :id", id=event_id)
        == 1
    )
    async with engine.connect() as conn:
        rows = (
            await conn.execute(
                text(
                    "SELECT channel, status, priority, attempts, traceparent FROM deliveries WHERE event_id = :id ORDER BY channel"
                ),
                {"id": event_id},
            )
        ).all()
    assert [r.channel for r in rows] == ["email", "sms", "webhook"]
    assert {(r.status, r.priority, r.attempts) for r in rows} == {("pending", 1, 0)}
    assert all(r.traceparent.startswith("00-") for r in rows)
    assert (
        await scalar(
            engine, "SELECT kind FROM audit_log WHERE event_id = :id", id=event_id
        )
        == "event.received"
    )


async def test_same_event_twice_is_stored_once(engine) -> None:
    """Republishing the same event_id (across and within batches) adds no event or delivery."""
    body = event_bytes(recipients=RECIPIENTS)
    await store(engine, [incoming(body), incoming(body)])
    await store(engine, [incoming(body)])
    assert await scalar(engine, "SELECT count(*) FROM events") == 1
    assert await scalar(engine, "SELECT count(*) FROM deliveries") == 3
    assert (
        await scalar(
            engine, "SELECT count(*) FROM audit_log WHERE kind = 'event.duplicate'"
        )
        == 2
    )


async def test_same_id_different_body_is_a_conflict_and_original_kept(engine) -> None:
    """A different body under a known event_id is audited as a conflict; the original stays."""
    event_id = str(uuid.uuid4())
    first = event_bytes(
        event_id=event_id, severity="critical", recipients=RECIPIENTS[:1]
    )
    second = event_bytes(event_id=event_id, severity="low", recipients=RECIPIENTS)
    await store(engine, [incoming(first)])
    await store(engine, [incoming(second)])
    assert (
        await scalar(engine, "SELECT severity FROM events WHERE id = :id", id=event_id)
        == "critical"
    )
    assert await scalar(engine, "SELECT count(*) FROM deliveries") == 1
    assert (
        await scalar(
            engine,
            "SELECT count(*) FROM audit_log WHERE kind = 'event.conflict' AND event_id = :id",
            id=event_id,
        )
        == 1
    )


async def test_event_without_recipients_is_stored_and_flagged(engine) -> None:
    """An alert that reaches nobody is stored and visible as event.unrouted."""
    body = event_bytes(recipients=[])
    await store(engine, [incoming(body)])
    assert await scalar(engine, "SELECT kind FROM audit_log") == "event.unrouted"
    assert await scalar(engine, "SELECT delivery_count FROM events") == 0


async def test_rejected_message_is_stored_with_reason_and_raw_bytes(engine) -> None:
    """A refused message becomes one rejected_messages row with its bytes and an audit entry."""
    await store(engine, [incoming(b"\xffnot json", message_id="m-1")])
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                text(
                    "SELECT reason, body, body_size, message_id, headers FROM rejected_messages"
                )
            )
        ).one()
    assert row.reason == RejectReason.INVALID_UTF8
    assert bytes(row.body) == b"\xffnot json"
    assert row.body_size == 9
    assert row.message_id == "m-1"
    assert "traceparent" in row.headers
    assert (
        await scalar(
            engine,
            "SELECT detail->>'reason' FROM audit_log WHERE kind = 'message.rejected'",
        )
        == "invalid_utf8"
    )


async def test_one_item_postgres_refuses_does_not_fail_its_batch(engine) -> None:
    """A batch with one event PostgreSQL refuses stores the others and rejects that one alone."""
    good = [incoming(event_bytes(recipients=RECIPIENTS)) for _ in range(5)]
    bad = incoming(event_bytes())
    assert isinstance(bad.outcome, Accepted)
    # Bypass validation to make PostgreSQL itself refuse the row (jsonb cannot hold \u0000).
    bad.outcome = Accepted(
        replace(bad.outcome.parsed, canonical='{"note": "\\u0000"}'), []
    )
    committed = await store(engine, [*good[:2], bad, *good[2:]])
    assert sorted(committed) == [str(n) for n in range(6)]
    assert await scalar(engine, "SELECT count(*) FROM events") == 5
    assert await scalar(engine, "SELECT count(*) FROM deliveries") == 15
    assert (
        await scalar(engine, "SELECT reason FROM rejected_messages")
        == "storage_rejected"
    )


async def test_new_deliveries_notify_their_channel(engine, database) -> None:
    """Committing deliveries sends one NOTIFY per channel for the workers to wake on."""
    import asyncio

    import asyncpg

    received: list[str] = []
    conn = await asyncpg.connect(
        database.replace("postgresql+asyncpg://", "postgresql://")
    )
    got = asyncio.Event()

    def listener(*args: object) -> None:
        received.append(str(args[3]))
        if len(received) >= 2:
            got.set()

    await conn.add_listener("dispatcher_outbox", listener)
    try:
        await store(
            engine,
            [
                incoming(event_bytes(recipients=RECIPIENTS[:2])),
                incoming(event_bytes(recipients=RECIPIENTS[:1])),
            ],
        )
        await asyncio.wait_for(got.wait(), 5)
    finally:
        await conn.close()
    assert sorted(received) == [ChannelKind.EMAIL.value, ChannelKind.SMS.value]
