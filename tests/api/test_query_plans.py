"""The dead-letter questions read the dead-only indexes, on a table big enough that the
planner's choice matters (EXPLAIN, not timing: speed lives in bench/api_queries.py)."""

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from dispatcher.api import queries
from dispatcher.api.filters import DeliveryFilters, EventFilters
from dispatcher.db.states import DeliveryStatus

pytestmark = pytest.mark.postgres

EVENTS = 30_000

#: Events received a second apart; three deliveries each, about 3 % of them dead.
_SEED = (
    f"""
    INSERT INTO events (id, schema_version, type, severity, occurred_at, received_at,
                        subject_id, payload, digest, delivery_count)
    SELECT gen_random_uuid(), 1, 'crisis.detected', 'high', t, t, 'person-' || i % 500,
           '{{}}'::jsonb, '\\x00'::bytea, 3
    FROM generate_series(1, {EVENTS}) AS i,
         LATERAL (SELECT now() - ({EVENTS} - i) * interval '1 s' AS t) AS at
    """,
    """
    INSERT INTO deliveries (id, event_id, channel, recipient, priority, status, attempts,
                            created_at, dead_at)
    SELECT gen_random_uuid(), e.id, c.channel, c.channel || '-' || e.subject_id, 1, s.status,
           1, e.received_at, CASE WHEN s.status = 'dead' THEN e.received_at END
    FROM events AS e
    CROSS JOIN (VALUES ('email'), ('sms'), ('webhook')) AS c(channel)
    CROSS JOIN LATERAL (
        SELECT CASE WHEN random() < 0.03 THEN 'dead' ELSE 'delivered' END AS status
    ) AS s
    """,
)


_MIDDLE = (
    "SELECT received_at, id FROM events ORDER BY received_at DESC LIMIT 1 OFFSET 10000"
)


def _indexes(node: dict[str, Any]) -> Iterator[str]:
    if "Index Name" in node:
        yield node["Index Name"]
    for child in node.get("Plans", []):
        yield from _indexes(child)


@pytest.fixture
async def big(engine: AsyncEngine) -> AsyncEngine:
    async with engine.begin() as conn:
        for statement in _SEED:
            await conn.execute(text(statement))
    async with engine.connect() as conn:
        autocommit = await conn.execution_options(isolation_level="AUTOCOMMIT")
        # VACUUM sets the visibility map, as autovacuum would on a real table.
        await autocommit.execute(text("VACUUM ANALYZE events, deliveries"))
    return engine


async def test_events_with_a_dead_delivery_probe_the_dead_only_index(
    big: AsyncEngine,
) -> None:
    """``GET /v1/events?delivery_status=dead`` checks each event in
    ix_deliveries_dead_event_id (dead rows only), on the first page and a later one."""
    dead = EventFilters(delivery_status=[DeliveryStatus.DEAD])
    async with big.connect() as conn:
        middle = (await conn.execute(text(_MIDDLE))).one()
        for after in (None, (middle.received_at, middle.id)):
            plan = await queries.plan(conn, queries.events_select(dead, after, 50))
            assert "ix_deliveries_dead_event_id" in set(_indexes(plan)), plan


async def test_dead_deliveries_list_from_the_dead_only_index(big: AsyncEngine) -> None:
    """``GET /v1/deliveries?status=dead``, alone or with a channel, walks
    ix_deliveries_dead_created_at, not every delivery by creation time."""
    async with big.connect() as conn:
        for channel in ([], ["sms"]):
            f = DeliveryFilters(status=[DeliveryStatus.DEAD], channel=channel)
            plan = await queries.plan(
                conn, queries.deliveries_select(f, None, None, 50)
            )
            assert "ix_deliveries_dead_created_at" in set(_indexes(plan)), plan


def test_statuses_reach_postgresql_written_out(engine: AsyncEngine) -> None:
    """Status filters are literals in the SQL, never ``$n``: a prepared statement's
    generic plan cannot prove ``WHERE status = 'dead'`` from a parameter."""
    dead = [DeliveryStatus.DEAD]
    for stmt in (
        queries.events_select(EventFilters(delivery_status=dead), None, 50),
        queries.deliveries_select(DeliveryFilters(status=dead), None, None, 50),
    ):
        compiled = stmt.compile(
            dialect=engine.dialect, compile_kwargs={"render_postcompile": True}
        )
        assert "status IN ('dead')" in str(compiled), str(compiled)
