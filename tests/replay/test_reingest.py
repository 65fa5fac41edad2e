"""Replaying rejected messages against a real PostgreSQL: one run at a time per message."""

from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from dispatcher.ingest import reingest
from dispatcher.ingest.reader import MessageReader
from dispatcher.ingest.reingest import Outcome
from dispatcher.ingest.rejected import RejectedFilter
from dispatcher.testing import event_bytes
from tests.replay.test_rejected_cli import one, store_rejected

pytestmark = pytest.mark.postgres

READER = MessageReader(max_body_bytes=262_144, rules=[], endpoint_filters={})


async def test_a_message_another_run_holds_is_left_to_it(engine: AsyncEngine) -> None:
    """While another run holds a message it is skipped (``gone``), never stored twice."""
    body = event_bytes(recipients=[{"channel": "email", "to": "a@example.org"}])
    rejected_id = await store_rejected(engine, body, "internal_error")
    where = RejectedFilter(ids=(rejected_id,))
    async with engine.connect() as holder, engine.connect() as runner:
        held: Any = (await holder.get_raw_connection()).driver_connection
        conn: Any = (await runner.get_raw_connection()).driver_connection
        plan = await reingest.plan(conn, READER, where)
        assert plan.ids == [rejected_id]
        assert plan.outcomes == {Outcome.STORED: 1}
        args: dict[str, Any] = {
            "by": "tester", "reason": "test", "where": where,
            "max_body_bytes": 262_144, "recipient_key": None,
        }  # fmt: skip
        async with held.transaction():
            await held.execute(
                "SELECT 1 FROM rejected_messages WHERE id = $1 FOR UPDATE", rejected_id
            )
            skipped = await reingest.replay(conn, READER, plan.ids, **args)
        assert (skipped.gone, sum(skipped.outcomes.values())) == (1, 0)
        done = await reingest.replay(conn, READER, plan.ids, **args)
        assert done.outcomes == {Outcome.STORED: 1}
        again = await reingest.replay(conn, READER, plan.ids, **args)
        assert again.gone == 1
    row = await one(
        engine,
        "SELECT count(*) AS n FROM audit_log WHERE kind = 'event.received'",
    )
    assert row.n == 1
