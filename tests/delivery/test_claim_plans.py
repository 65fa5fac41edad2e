"""Claims run one generic plan each, made to find rows through indexes.

Planned afresh on every call, a claim spent about as long planning as executing; and a
generic plan left to PostgreSQL, made while ``deliveries`` was small, scanned the whole
of ``deliveries`` and ``events`` on every claim until an autoanalyze happened to replace
it (docs/benchmarks.md, "Why the drain had two speeds", "Claims plan once"). The claim
connection's session (``CLAIM_SESSION``, ``db/plans.py``) plans once, by index.
"""

from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from dispatcher.db.kept import KeptConnection
from dispatcher.db.sql import Statement
from dispatcher.events.kinds import ChannelKind
from dispatcher.outbox.claims import _CLAIM, _CLAIM_LANES, _EXPIRED, CLAIM_SESSION
from dispatcher.sinks.webhook import WebhookSink
from tests.delivery.harness import StackFactory, event_to, webhook_channel
from tests.plans import generic_plan, nodes, scans

pytestmark = [pytest.mark.postgres, pytest.mark.rabbitmq]

MONITOR = ("webhook", "safety-monitor")
_PLANS = """
    SELECT statement, generic_plans, custom_plans FROM pg_prepared_statements
    WHERE statement LIKE '%UPDATE deliveries%'
      AND statement NOT LIKE '%pg_prepared_statements%'
"""


async def plans(conn: Any) -> list[tuple[int, int]]:
    """(generic, custom) plans of each statement of this session that updates deliveries."""
    rows = await conn.fetch(_PLANS)
    return [(r["generic_plans"], r["custom_plans"]) for r in rows]


async def test_claims_are_planned_once_not_per_call(
    stack: StackFactory, webhook_sink: WebhookSink
) -> None:
    """A backlog claimed in many statements runs every claim on the plan made once for
    it: no claim is planned for its own arguments."""
    # Two slots and a long sweep: the backlog is claimed two rows at a time, by freed
    # slots, and once it is delivered nothing uses the two connections.
    channel = webhook_channel(
        webhook_sink.url,
        ["safety-monitor"],
        concurrency=2,
        critical_reserve=0,
        poll_interval=60.0,
    )
    async with stack(channels={"webhook": channel}) as s:
        await s.wait_listening_and_swept()
        ids = await s.publish(*[event_to(MONITOR) for _ in range(30)])
        await s.wait_final(ids, count=30)
        assert s.delivery is not None
        worker = s.delivery.workers[ChannelKind.WEBHOOK]
        assert worker.claims > 6
        claims = await plans(await worker._link.driver())
    assert sum(generic for generic, _ in claims) > 6
    assert [custom for _, custom in claims] == [0] * len(claims)
    assert len(webhook_sink.accepted) == 30
    assert webhook_sink.duplicates() == []


@pytest.mark.parametrize(
    "statement",
    [_CLAIM, _CLAIM_LANES, _EXPIRED],
    ids=["channel-wide", "per-endpoint", "expired"],
)
async def test_a_claim_plan_made_on_an_empty_table_reads_rows_by_index(
    engine: AsyncEngine, statement: Statement
) -> None:
    """Even made while ``deliveries`` and ``events`` are empty (a new database), the
    claim connection's plan reads both only through indexes, and joins by nested loops:
    never a scan of a table, which it would keep doing as the table grows."""
    link = KeptConnection(engine, settings=CLAIM_SESSION)
    async with link.held():
        plan = await generic_plan(await link.driver(), statement)
    reads = [
        (kind, rel, index)
        for kind, rel, index in scans(plan)
        if rel in ("deliveries", "events") and kind != "ModifyTable"
    ]
    assert {rel for _, rel, _ in reads} >= {"deliveries", "events"}, plan
    assert all(index is not None for _, _, index in reads), reads
    joins = {n["Node Type"] for n in nodes(plan)} & {"Hash Join", "Merge Join"}
    assert not joins, plan
