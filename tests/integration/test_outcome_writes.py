"""What a delivery's claim and outcome write: on the row's own page, attempts with lineage;
and how the outcome statement finds its rows."""

import json
import uuid

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from dispatcher.db.kept import KeptConnection
from dispatcher.db.states import DeliveryStatus
from dispatcher.outbox.outcomes import _COMPLETE, OUTCOME_SESSION, Outcome
from tests.integration.test_outbox_store import (
    attempt_record,
    claim_now,
    complete_now,
    seed,
)
from tests.plans import generic_plan, scans

pytestmark = pytest.mark.postgres

_PAGE = text(
    "SELECT id, (ctid::text::point)[0]::int AS page FROM deliveries WHERE id = ANY(:ids)"
)


async def pages(engine: AsyncEngine, ids: list[uuid.UUID]) -> dict[uuid.UUID, int]:
    async with engine.connect() as conn:
        rows = (await conn.execute(_PAGE, {"ids": ids})).all()
    return {r.id: r.page for r in rows}


async def test_a_claim_and_its_outcome_stay_on_the_deliverys_page(
    engine: AsyncEngine,
) -> None:
    """The claim's and the outcome's row versions go on the delivery's own page, which
    the table's fillfactor keeps room on, even when later rows filled the pages after it."""
    # Oldest due first: the three claimed rows are the first inserted, on page 0, and
    # enough rows follow to fill it and more.
    ids = [await seed(engine, due_in=-1000.0 + n) for n in range(150)]
    before = await pages(engine, ids)
    assert max(before.values()) >= 1, before
    claimed = await claim_now(engine, limit=3)
    assert [c.id for c in claimed] == ids[:3]
    assert await pages(engine, ids[:3]) == {i: before[i] for i in ids[:3]}
    await complete_now(
        engine,
        [
            Outcome(
                c.id,
                c.lease_token,
                DeliveryStatus.DELIVERED,
                attempts=(attempt_record(1, "delivered"),),
            )
            for c in claimed
        ],
    )
    assert await pages(engine, ids[:3]) == {i: before[i] for i in ids[:3]}


async def test_attempts_carry_the_replay_also_when_the_outcome_is_fenced(
    engine: AsyncEngine,
) -> None:
    """An attempt after a replay is recorded with the replay's id and lineage ``replay``,
    whether its outcome passed the fence or was discarded."""
    kept, fenced = await seed(engine), await seed(engine)
    replay_id = uuid.uuid4()
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO replays (id, created_by, reason, filters, rate)"
                " VALUES (:id, 'test', 'test', CAST(:f AS jsonb), 10)"
            ),
            {"id": replay_id, "f": json.dumps({})},
        )
        await conn.execute(
            text("UPDATE deliveries SET replay_id = :r WHERE id = ANY(:ids)"),
            {"r": replay_id, "ids": [kept, fenced]},
        )
    claimed = {c.id: c for c in await claim_now(engine)}
    applied = await complete_now(
        engine,
        [
            Outcome(
                kept,
                claimed[kept].lease_token,
                DeliveryStatus.DELIVERED,
                attempts=(attempt_record(1, "delivered"),),
            ),
            Outcome(
                fenced,
                uuid.uuid4(),
                DeliveryStatus.DELIVERED,
                attempts=(attempt_record(1, "delivered"),),
            ),
        ],
    )
    assert [a.delivery_id for a in applied] == [kept]
    async with engine.connect() as conn:
        rows = (
            await conn.execute(
                text(
                    "SELECT delivery_id, lineage, replay_id FROM delivery_attempts"
                    " ORDER BY id"
                )
            )
        ).all()
    assert [tuple(r) for r in rows] == [
        (kept, "replay", replay_id),
        (fenced, "replay", replay_id),
    ]


async def test_the_outcome_plan_made_on_an_empty_table_reads_deliveries_by_key(
    engine: AsyncEngine,
) -> None:
    """The recorder's session makes one generic plan of the outcome statement, and even
    made while ``deliveries`` is empty it finds each row by primary key: never a scan of
    the table (which it would keep doing as the table grows)."""
    link = KeptConnection(engine, settings=OUTCOME_SESSION)
    async with link.held():
        plan = await generic_plan(await link.driver(), _COMPLETE)
    reads = [
        (kind, index)
        for kind, rel, index in scans(plan)
        if rel == "deliveries" and kind != "ModifyTable"
    ]
    assert reads, plan
    assert all(index == "pk_deliveries" for _, index in reads), reads
