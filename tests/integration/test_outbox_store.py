"""The outbox SQL against real PostgreSQL: claim order, leases, fencing, outcomes, status."""

import asyncio
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from dispatcher.db.states import DeliveryStatus
from dispatcher.outbox.claims import _CLAIM_LANES, claim
from dispatcher.outbox.outcomes import (
    AttemptRecord,
    AuditNote,
    Outcome,
    complete,
    renew,
)
from dispatcher.outbox.status import breaker_status, queue_status
from dispatcher.testing import make_event
from tests.waiting import wait_for

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
    # Webhook claims read each endpoint only up to its room: the row over the cap is not
    # even a candidate.
    assert result.considered == 3
    left = await row(engine, third)
    assert (left.status, left.attempts, left.lease_token) == ("pending", 0, None)
    assert [c.id for c in await claim_now(engine, "webhook")] == [third]


@pytest.mark.parametrize(
    ("channel", "names"),
    [
        ("webhook", ("busy", "exact", "full", "quiet")),
        (
            "email",
            tuple(f"{n}@example.org" for n in ("busy", "exact", "full", "quiet")),
        ),
    ],
    ids=["per-endpoint", "channel-wide"],
)
async def test_a_claim_names_the_recipients_it_left_rows_behind_for_at_their_cap(
    engine: AsyncEngine, channel: str, names: tuple[str, str, str, str]
) -> None:
    """Whether rows wait under a cap comes from the claim, not from counting in-flight."""
    busy, exact, full, quiet = names
    for recipient, rows in ((busy, 3), (exact, 2), (full, 1), (quiet, 1)):
        for n in range(rows):
            await seed(engine, channel=channel, recipient=recipient, due_in=-10 + n)
    async with engine.connect() as conn:
        driver = (await conn.get_raw_connection()).driver_connection
        assert driver is not None
        result = await claim(
            driver,
            channel,
            limit=10,
            lease_seconds=60.0,
            owner="test",
            cap=2,
            in_flight={full: 2, exact: 0},
        )
        # Every recipient at its cap: nothing leased, and still the report.
        again = await claim(
            driver,
            channel,
            limit=10,
            lease_seconds=60.0,
            owner="test",
            cap=2,
            in_flight=dict.fromkeys(names, 2),
        )
    leased = sorted(c.recipient for c in result.rows)
    assert leased == sorted([busy, busy, exact, exact, quiet])
    # "busy" had a third row over its room; "exact" had exactly its room; "full" was at
    # its cap already (named without its rows being read); "quiet" had room to spare.
    assert result.capped == {busy, full}
    assert (again.rows, again.capped) == ([], frozenset(names))


async def test_webhook_claim_orders_across_endpoints_and_honours_caps_and_blocks(
    engine: AsyncEngine,
) -> None:
    """Per-endpoint lanes keep the global order: most urgent first, then oldest due."""
    a_low_old = await seed(engine, channel="webhook", recipient="a", due_in=-30)
    a_low_new = await seed(engine, channel="webhook", recipient="a", due_in=-5)
    b_critical = await seed(
        engine, channel="webhook", recipient="b", severity="critical"
    )
    b_low = await seed(engine, channel="webhook", recipient="b", due_in=-20)
    await seed(
        engine, channel="webhook", recipient="c", severity="critical", due_in=-40
    )
    await seed(engine, channel="webhook", recipient="a", due_in=60)  # not due yet
    claimed = await claim_now(engine, "webhook", blocked=["c"], limit=3)
    assert [c.id for c in claimed] == [b_critical, a_low_old, b_low]
    # "a" has one in flight under a cap of 1: nothing more for it; "c" is still blocked.
    rest = await claim_now(
        engine, "webhook", blocked=["c"], cap=1, in_flight={"a": 1, "b": 0}
    )
    assert rest == []
    assert [c.id for c in await claim_now(engine, "webhook", blocked=["c"])] == [
        a_low_new
    ]


async def test_concurrent_webhook_claims_never_share_a_row(engine: AsyncEngine) -> None:
    ids = {
        await seed(engine, channel="webhook", recipient=f"endpoint-{n % 3}")
        for n in range(45)
    }
    batches = await asyncio.gather(
        *(claim_now(engine, "webhook", limit=7, cap=4) for _ in range(12))
    )
    claimed = [c.id for batch in batches for c in batch]
    assert len(claimed) == len(set(claimed))
    for batch in batches:  # the cap holds within each claim
        per_endpoint: dict[str, int] = {}
        for c in batch:
            per_endpoint[c.recipient] = per_endpoint.get(c.recipient, 0) + 1
        assert max(per_endpoint.values(), default=0) <= 4
    while len(claimed) < len(ids):
        batch = await claim_now(engine, "webhook", limit=50)
        assert batch, "rows were stranded"
        claimed += [c.id for c in batch]
    assert sorted(claimed) == sorted(ids)


_MANY = text(
    """
    WITH e AS (
        INSERT INTO events (id, schema_version, type, severity, occurred_at, subject_id,
                            payload, digest, delivery_count)
        SELECT gen_random_uuid(), 1, 'crisis.detected', 'low', now(), 'subject-1',
               '{}'::jsonb, '\\x00', 1
        FROM generate_series(1, :n)
        RETURNING id
    )
    INSERT INTO deliveries (id, event_id, channel, recipient, priority, next_attempt_at)
    SELECT gen_random_uuid(), id, :channel, :recipient, 3, now() - interval '1 minute'
    FROM e
    """
)


async def seed_many(
    engine: AsyncEngine, n: int, *, recipient: str, channel: str = "webhook"
) -> None:
    """``n`` events with one due low-severity delivery each, in one statement."""
    async with engine.begin() as conn:
        await conn.execute(_MANY, {"n": n, "channel": channel, "recipient": recipient})


async def _claim_buffers(engine: AsyncEngine, **kwargs) -> tuple[int, int]:
    """(Buffers the webhook claim read to choose its rows, rows it leased), rolled back.

    Only the choosing part: the lease's own writes touch one index page per index level,
    and the indexes get a level deeper as the table grows."""
    args = {
        "limit": 16,
        "cap": 8,
        "busy_recipients": [],
        "busy_counts": [],
        "max_priority": 4,
        "owner": "test",
        "lease": 60.0,
        **kwargs,
    }
    async with engine.connect() as conn:
        driver = (await conn.get_raw_connection()).driver_connection
        assert driver is not None
        # VACUUM too: whether autovacuum has set the visibility map yet decides how many
        # heap pages the index scans visit, and on a loaded machine it runs at any moment
        # between the two measurements (seen: 17 against 30 buffers).
        await driver.execute("VACUUM (ANALYZE) deliveries")
        # Rolled back: the measurement leaves no lease behind.
        tx = driver.transaction()
        await tx.start()
        try:
            plan = await driver.fetchval(
                "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + _CLAIM_LANES.sql,
                *_CLAIM_LANES.args(args),
            )
            leased = await driver.fetchval(
                "SELECT count(*) FROM deliveries WHERE status = 'in_flight'"
            )
        finally:
            await tx.rollback()
    (top,) = json.loads(plan) if isinstance(plan, str) else plan
    (candidates,) = _nodes(top["Plan"], "CTE candidates")
    return candidates["Shared Hit Blocks"] + candidates["Shared Read Blocks"], leased


def _nodes(node: dict[str, Any], subplan: str) -> list[dict[str, Any]]:
    found = [node] if node.get("Subplan Name") == subplan else []
    for child in node.get("Plans", []):
        found += _nodes(child, subplan)
    return found


async def test_a_blocked_endpoints_backlog_costs_a_webhook_claim_nothing(
    engine: AsyncEngine,
) -> None:
    """An endpoint whose breaker is open (or at its cap) may hold a long backlog during an
    outage: a claim for the other endpoints must not read it. Measured in buffers touched,
    which would grow with the backlog if its rows were read and filtered out."""
    for n in range(5):
        await seed(engine, channel="webhook", recipient="healthy", due_in=-n)
    await seed_many(engine, 200, recipient="down")
    await seed_many(engine, 200, recipient="full")
    small, leased = await _claim_buffers(
        engine, blocked=["down"], busy_recipients=["full"], busy_counts=[8]
    )
    assert leased == 5  # only the healthy endpoint's rows
    await seed_many(engine, 20_000, recipient="down")
    await seed_many(engine, 20_000, recipient="full")
    large, leased = await _claim_buffers(
        engine, blocked=["down"], busy_recipients=["full"], busy_counts=[8]
    )
    assert leased == 5
    # 40,000 more rows span about 600 heap pages (the channel-wide claim reads them all
    # here) and hundreds of index pages; at most an index level more is allowed for.
    assert large - small <= 8, (small, large)


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

    async def lease_expired() -> bool:
        async with engine.connect() as conn:
            sql = "SELECT next_attempt_at <= now() FROM deliveries WHERE id = :id"
            return bool((await conn.execute(text(sql), {"id": delivery})).scalar_one())

    await wait_for(lease_expired, "the 0.2 s lease to expire")
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


async def test_renewal_lengthens_only_leases_still_held_and_never_waits_for_a_lock(
    engine: AsyncEngine,
) -> None:
    """``renew`` extends the leases its tokens still hold, leaves a lease another claim
    took over alone, and skips a row locked elsewhere instead of waiting for it."""
    mine, taken, locked = await seed(engine), await seed(engine), await seed(engine)
    claims = {c.id: c for c in await claim_now(engine, limit=3, owner="slow")}
    async with engine.begin() as conn:
        await conn.execute(
            text("UPDATE deliveries SET next_attempt_at = now() WHERE id = :id"),
            {"id": taken},
        )
    (other,) = await claim_now(engine, owner="other")
    assert other.id == taken
    before = {i: (await row(engine, i)).next_attempt_at for i in (taken, locked)}
    leases = [(i, claims[i].lease_token, 3600.0) for i in (mine, taken, locked)]
    async with engine.connect() as holder, engine.connect() as conn:
        await holder.execute(
            text("SELECT 1 FROM deliveries WHERE id = :id FOR UPDATE"), {"id": locked}
        )
        driver = (await conn.get_raw_connection()).driver_connection
        assert driver is not None
        async with asyncio.timeout(5):
            renewed = await renew(driver, leases)
        await holder.rollback()
    assert renewed == {mine}
    stored = await row(engine, mine)
    assert stored.next_attempt_at > datetime.now(UTC) + timedelta(seconds=3000)
    assert stored.lease_token == claims[mine].lease_token
    for i in (taken, locked):
        assert (await row(engine, i)).next_attempt_at == before[i]


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
    applied = await complete_now(engine, outcomes, [note])
    assert {a.delivery_id for a in applied} == {retried, dead, deferred}
    assert [
        (d.id, d.reason, d.error_class)
        for d in (a.dead_letter() for a in applied if a.status == "dead")
    ] == [(dead, "permanent_error", "provider_permanent")]
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


async def test_dispatcher_connections_run_without_jit(engine: AsyncEngine) -> None:
    """PostgreSQL's JIT compiles any statement whose estimate crosses jit_above_cost: a
    webhook claim over a 200,000-row outbox spent ~24 ms compiling to run for 1.5 ms
    (bench/claim_backlog.py). Every dispatcher statement is short, so it is off."""
    async with engine.connect() as conn:
        assert (await conn.execute(text("SHOW jit"))).scalar_one() == "off"
