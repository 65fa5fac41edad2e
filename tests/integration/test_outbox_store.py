"""The outbox SQL against real PostgreSQL: claim order, leases, fencing, outcomes, status."""

import asyncio
import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from dispatcher.db.models import DeliveryStatus
from dispatcher.outbox.store import (
    AttemptRecord,
    AuditNote,
    Outcome,
    breaker_status,
    claim,
    complete,
    queue_status,
)
from dispatcher.testing import make_event

pytestmark = pytest.mark.postgres

_EVENT = text(
    """
    INSERT INTO events (id, schema_version, type, severity, occurred_at, subject_id,
                        payload, digest, delivery_count)
    VALUES (:id, 1, :type, :severity, now(), 'subject-1', CAST(:payload AS jsonb), '\\x00', 1)
    """
)
_DELIVERY = text(
    """
    INSERT INTO deliveries (id, event_id, channel, recipient, priority, next_attempt_at)
    VALUES (:id, :event_id, :channel, :recipient, :priority, now() + make_interval(secs => :due_in))
    """
)
_PRIORITY = {"critical": 0, "high": 1, "medium": 2, "low": 3, "info": 4}


async def seed(
    engine: AsyncEngine,
    *,
    severity: str = "low",
    channel: str = "email",
    recipient: str = "a@example.org",
    due_in: float = -1.0,
) -> uuid.UUID:
    """One event with one delivery; returns the delivery id."""
    event = make_event(severity=severity)
    delivery_id = uuid.uuid4()
    async with engine.begin() as conn:
        await conn.execute(
            _EVENT,
            {
                "id": event["event_id"],
                "type": event["type"],
                "severity": severity,
                "payload": json.dumps(event),
            },
        )
        await conn.execute(
            _DELIVERY,
            {
                "id": delivery_id,
                "event_id": event["event_id"],
                "channel": channel,
                "recipient": recipient,
                "priority": _PRIORITY[severity],
                "due_in": due_in,
            },
        )
    return delivery_id


async def claim_now(engine: AsyncEngine, channel: str = "email", **kwargs):
    params = {"limit": 10, "lease_seconds": 60.0, "owner": "test", **kwargs}
    async with engine.connect() as conn:
        driver = (await conn.get_raw_connection()).driver_connection
        assert driver is not None
        return (await claim(driver, channel, **params)).rows


async def complete_now(engine: AsyncEngine, outcomes, notes=()):
    """``complete`` as the recorder runs it: one statement on a connection of its own."""
    async with engine.connect() as conn:
        driver = (await conn.get_raw_connection()).driver_connection
        assert driver is not None
        return await complete(driver, outcomes, notes)


def attempt_record(n: int, outcome: str = "failed") -> AttemptRecord:
    now = datetime.now(UTC)
    return AttemptRecord(
        attempt=n,
        provider="primary",
        started_at=now,
        finished_at=now,
        outcome=outcome,
        error_class=None if outcome == "delivered" else "timeout",
        provider_code="250" if outcome == "delivered" else None,
        latency_ms=1.5,
    )


async def row(engine: AsyncEngine, delivery_id: uuid.UUID):
    async with engine.connect() as conn:
        result = await conn.execute(
            text("SELECT * FROM deliveries WHERE id = :id"), {"id": delivery_id}
        )
        return result.one()


async def test_claims_most_urgent_first_then_oldest_due(engine: AsyncEngine) -> None:
    low_old = await seed(engine, severity="low", due_in=-10)
    low_new = await seed(engine, severity="low", due_in=-1)
    critical = await seed(engine, severity="critical", due_in=-1)
    high = await seed(engine, severity="high", due_in=-1)
    claimed = await claim_now(engine, limit=3)
    assert [c.id for c in claimed] == [critical, high, low_old]
    rest = await claim_now(engine)
    assert [c.id for c in rest] == [low_new]


async def test_claim_skips_other_channels_future_rows_and_blocked_recipients(
    engine: AsyncEngine,
) -> None:
    due = await seed(engine, recipient="ok-endpoint", channel="webhook")
    await seed(engine, channel="sms", recipient="+15550000001")
    await seed(engine, channel="webhook", recipient="later", due_in=60)
    await seed(engine, channel="webhook", recipient="broken-endpoint")
    claimed = await claim_now(engine, "webhook", blocked=["broken-endpoint"])
    assert [c.id for c in claimed] == [due]


async def test_claim_with_max_priority_takes_only_critical(engine: AsyncEngine) -> None:
    await seed(engine, severity="low")
    critical = await seed(engine, severity="critical")
    claimed = await claim_now(engine, max_priority=0)
    assert [c.id for c in claimed] == [critical]


async def test_claim_leaves_what_is_over_a_recipients_cap_untouched(
    engine: AsyncEngine,
) -> None:
    """Over the cap (minus what is in flight), rows stay due and in order, not leased."""
    first, second, third = [
        await seed(engine, channel="webhook", recipient="busy", due_in=-10 + n)
        for n in range(3)
    ]
    other = await seed(engine, channel="webhook", recipient="quiet", due_in=-1)
    async with engine.connect() as conn:
        driver = (await conn.get_raw_connection()).driver_connection
        assert driver is not None
        result = await claim(
            driver,
            "webhook",
            limit=10,
            lease_seconds=60.0,
            owner="test",
            cap=3,
            in_flight={"busy": 1},
        )
    assert [c.id for c in result.rows] == [first, second, other]
    assert result.considered == 4
    left = await row(engine, third)
    assert (left.status, left.attempts, left.lease_token) == ("pending", 0, None)
    assert [c.id for c in await claim_now(engine, "webhook")] == [third]


async def test_claim_is_a_lease_with_a_fresh_token_and_counts_the_attempt(
    engine: AsyncEngine,
) -> None:
    delivery = await seed(engine)
    (claimed,) = await claim_now(engine, owner="replica-a")
    stored = await row(engine, delivery)
    assert stored.status == DeliveryStatus.IN_FLIGHT
    assert stored.lease_owner == "replica-a"
    assert stored.lease_token == claimed.lease_token
    assert claimed.attempts == stored.attempts == 1
    assert stored.next_attempt_at > datetime.now(UTC) + timedelta(seconds=50)
    assert claimed.payload["type"] == "crisis.detected"
    assert await claim_now(engine) == []  # leased: nobody else gets it


async def test_concurrent_claims_never_share_a_row(engine: AsyncEngine) -> None:
    ids = {await seed(engine) for _ in range(40)}
    batches = await asyncio.gather(*(claim_now(engine, limit=7) for _ in range(8)))
    claimed = [c.id for batch in batches for c in batch]
    assert len(claimed) == len(set(claimed)) == 40
    assert set(claimed) == ids


async def test_expired_lease_is_claimed_again_and_late_result_is_fenced_off(
    engine: AsyncEngine,
) -> None:
    delivery = await seed(engine)
    (first,) = await claim_now(engine, lease_seconds=0.2, owner="died")
    await asyncio.sleep(0.4)
    (second,) = await claim_now(engine, owner="alive")
    assert second.id == delivery
    assert second.lease_token != first.lease_token
    assert second.attempts == 2

    late = Outcome(
        delivery,
        first.lease_token,
        DeliveryStatus.DEAD,
        error_class="timeout",
        attempts=(attempt_record(1),),
    )
    assert await complete_now(engine, [late]) == []
    stored = await row(engine, delivery)
    assert stored.status == DeliveryStatus.IN_FLIGHT
    assert stored.lease_owner == "alive"

    done = Outcome(
        delivery,
        second.lease_token,
        DeliveryStatus.DELIVERED,
        provider="primary",
        attempts=(attempt_record(2, "delivered"),),
    )
    await complete_now(engine, [done])
    stored = await row(engine, delivery)
    assert stored.status == DeliveryStatus.DELIVERED
    assert stored.lease_token is None
    assert stored.delivered_at is not None
    async with engine.connect() as conn:
        attempts = (
            await conn.execute(
                text(
                    "SELECT attempt, outcome FROM delivery_attempts"
                    " WHERE delivery_id = :id ORDER BY attempt"
                ),
                {"id": delivery},
            )
        ).all()
    # The late holder's try really happened, so it is on record; it just cannot set the status.
    assert [tuple(a) for a in attempts] == [(1, "failed"), (2, "delivered")]


async def test_outcomes_are_applied_in_one_batch(engine: AsyncEngine) -> None:
    retried, dead, deferred = await seed(engine), await seed(engine), await seed(engine)
    claims = {c.id: c for c in await claim_now(engine)}
    later = datetime.now(UTC) + timedelta(seconds=30)
    outcomes = [
        Outcome(
            retried,
            claims[retried].lease_token,
            DeliveryStatus.PENDING,
            next_attempt_at=later,
            error_class="timeout",
            error_message="no answer",
            attempts=(attempt_record(1),),
        ),
        Outcome(
            dead,
            claims[dead].lease_token,
            DeliveryStatus.DEAD,
            error_class="provider_permanent",
            error_message="SMTP 550",
            dead_reason="permanent_error",
            attempts=(attempt_record(1),),
        ),
        Outcome(
            deferred,
            claims[deferred].lease_token,
            DeliveryStatus.PENDING,
            next_attempt_at=later,
            refund=1,
        ),
    ]
    note = AuditNote("breaker.transition", json.dumps({"provider": "primary"}))
    dead_letters = await complete_now(engine, outcomes, [note])
    assert [(d.id, d.reason, d.error_class) for d in dead_letters] == [
        (dead, "permanent_error", "provider_permanent")
    ]
    r = await row(engine, retried)
    assert (r.status, r.attempts, r.last_error_class) == ("pending", 1, "timeout")
    assert abs((r.next_attempt_at - later).total_seconds()) < 0.01
    d = await row(engine, dead)
    assert (d.status, d.last_error_message) == ("dead", "SMTP 550")
    assert d.dead_at is not None
    f = await row(engine, deferred)
    assert (f.status, f.attempts) == (
        "pending",
        0,
    )  # no try was made: the claim is refunded
    async with engine.connect() as conn:
        audit = (
            await conn.execute(
                text("SELECT kind, delivery_id, detail FROM audit_log ORDER BY id")
            )
        ).all()
    kinds = [(a.kind, a.delivery_id) for a in audit]
    assert ("delivery.dead_lettered", dead) in kinds
    assert ("breaker.transition", None) in kinds
    dead_entry = next(a for a in audit if a.kind == "delivery.dead_lettered")
    assert dead_entry.detail == {
        "channel": "email",
        "attempts": 1,
        "error_class": "provider_permanent",
        "reason": "permanent_error",
    }


async def test_status_queries(engine: AsyncEngine) -> None:
    await seed(engine, channel="sms", recipient="+15550000001")
    await seed(engine, channel="sms", recipient="+15550000002")
    await claim_now(engine, "sms", limit=1)
    counts = {(c.channel, c.status): c.count for c in await queue_status_now(engine)}
    assert counts == {("sms", "in_flight"): 1, ("sms", "pending"): 1}
    notes = [
        AuditNote(
            "breaker.transition",
            json.dumps(
                {"owner": "r1", "channel": "sms", "provider": "twilio-a", "new": s}
            ),
        )
        for s in ("open", "half_open")
    ]
    for note in notes:  # one transaction each, so they get increasing times
        await complete_now(engine, [], [note])
    async with engine.connect() as conn:
        breakers = await breaker_status(conn)
    assert [(b.owner, b.provider, b.state) for b in breakers] == [
        ("r1", "twilio-a", "half_open")
    ]


async def queue_status_now(engine: AsyncEngine):
    async with engine.connect() as conn:
        return await queue_status(conn)
