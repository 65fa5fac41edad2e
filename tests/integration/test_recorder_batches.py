"""How the recorder groups outcomes into transactions: outcomes that arrive one by one
share one while they linger, and stopping writes them at once."""

import asyncio

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from dispatcher.db.states import DeliveryStatus
from dispatcher.delivery.recorder import LINGER_UNTIL, Recorder
from dispatcher.outbox.outcomes import Outcome
from tests.integration.test_outbox_store import attempt_record, claim_now, seed

pytestmark = pytest.mark.postgres

#: Transactions that wrote these deliveries' current versions and their attempts.
_WRITERS = text(
    "SELECT count(DISTINCT xmin::text) AS n FROM ("
    " SELECT xmin FROM deliveries WHERE id = ANY(:ids)"
    " UNION ALL SELECT xmin FROM delivery_attempts WHERE delivery_id = ANY(:ids)"
    ") AS versions"
)
_DELIVERED = text(
    "SELECT count(*) FROM deliveries WHERE id = ANY(:ids) AND status = 'delivered'"
)


async def claimed_outcomes(engine: AsyncEngine, n: int) -> list[Outcome]:
    """``n`` claimed deliveries, each with a successful first attempt."""
    for _ in range(n):
        await seed(engine)
    return [
        Outcome(
            c.id,
            c.lease_token,
            DeliveryStatus.DELIVERED,
            attempts=(attempt_record(1, "delivered"),),
        )
        for c in await claim_now(engine, limit=n)
    ]


async def test_outcomes_arriving_one_by_one_share_one_transaction(
    engine: AsyncEngine,
) -> None:
    """Outcomes added a little apart, within the recorder's linger, are committed by one
    statement: every row version and attempt they wrote has the same transaction id."""
    outcomes = await claimed_outcomes(engine, 3)
    recorder = Recorder(engine, linger=1.0)
    await recorder.start()
    try:
        for outcome in outcomes:
            recorder.add(outcome, lease_seconds=60.0)
            # As attempts finish: a moment apart, long enough for a write to start.
            await asyncio.sleep(0.05)
        await recorder.flush()
    finally:
        await recorder.stop()
    ids = [o.delivery_id for o in outcomes]
    async with engine.connect() as conn:
        assert (await conn.execute(_DELIVERED, {"ids": ids})).scalar_one() == 3
        assert (await conn.execute(_WRITERS, {"ids": ids})).scalar_one() == 1


async def test_stopping_writes_lingering_outcomes_at_once(engine: AsyncEngine) -> None:
    """An outcome waiting out a long linger is written as soon as the recorder stops."""
    outcomes = await claimed_outcomes(engine, 1)
    recorder = Recorder(engine, linger=3600.0)
    await recorder.start()
    recorder.add(outcomes[0], lease_seconds=60.0)
    async with asyncio.timeout(30):
        await recorder.stop()
    async with engine.connect() as conn:
        delivered = await conn.execute(_DELIVERED, {"ids": [outcomes[0].delivery_id]})
        assert delivered.scalar_one() == 1


async def test_a_full_batch_does_not_linger(engine: AsyncEngine) -> None:
    """As many outcomes as make a batch are written without waiting out the linger."""
    recorder = Recorder(engine, linger=3600.0)
    await recorder.start()
    try:
        outcomes = await claimed_outcomes(engine, LINGER_UNTIL)
        for outcome in outcomes:
            recorder.add(outcome, lease_seconds=60.0)
        async with asyncio.timeout(30):
            await recorder.flush()
    finally:
        await recorder.stop()
    ids = [o.delivery_id for o in outcomes]
    async with engine.connect() as conn:
        assert (
            await conn.execute(_DELIVERED, {"ids": ids})
        ).scalar_one() == LINGER_UNTIL
