"""The API's story of a delivery as the recorder writes it: the attempt row is the record."""

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from dispatcher.db.states import DeliveryStatus
from dispatcher.outbox.outcomes import Outcome
from tests.api.conftest import Api
from tests.integration.test_outbox_store import (
    attempt_record,
    claim_now,
    complete_now,
    seed,
)


async def test_a_first_attempt_that_succeeds_is_in_the_timeline_without_an_audit_row(
    api: Api, engine: AsyncEngine
) -> None:
    """A delivery recorded delivered on its first attempt shows that attempt in
    ``GET /v1/events/{id}`` and ``GET /v1/deliveries/{id}``; the audit log has no entry
    for it (the attempt row says it)."""
    delivery_id = await seed(engine)
    [claimed] = await claim_now(engine)
    await complete_now(
        engine,
        [
            Outcome(
                claimed.id,
                claimed.lease_token,
                DeliveryStatus.DELIVERED,
                provider="primary",
                attempts=(attempt_record(1, "delivered"),),
            )
        ],
    )
    event = await api.ok(f"/v1/events/{claimed.event_id}")
    [delivery] = event["deliveries"]
    assert delivery["status"] == "delivered"
    assert [
        (a["attempt"], a["outcome"], a["provider"]) for a in delivery["timeline"]
    ] == [(1, "delivered", "primary")]
    detail = await api.ok(f"/v1/deliveries/{delivery_id}")
    assert [a["outcome"] for a in detail["timeline"]] == ["delivered"]
    async with engine.connect() as conn:
        audited = await conn.scalar(
            text("SELECT count(*) FROM audit_log WHERE delivery_id = :id"),
            {"id": delivery_id},
        )
    assert audited == 0
