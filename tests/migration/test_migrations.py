"""Migrations: upgrade from empty, models and migrations agree, and a round trip."""

import pytest
from sqlalchemy import inspect, text
from sqlalchemy.exc import DBAPIError

from dispatcher.db import migrate
from dispatcher.db.models import Base

pytestmark = pytest.mark.postgres


async def _tables(engine) -> set[str]:
    async with engine.connect() as conn:
        return set(await conn.run_sync(lambda c: inspect(c).get_table_names()))


async def test_upgrade_from_empty_creates_every_table(empty_engine) -> None:
    """An empty database upgrades to head with every model table present."""
    await migrate.upgrade(empty_engine)
    assert set(Base.metadata.tables) <= await _tables(empty_engine)


async def test_models_and_migrations_agree(empty_engine) -> None:
    """alembic check finds nothing to autogenerate after upgrading to head."""
    await migrate.upgrade(empty_engine)
    await migrate.check(empty_engine)


async def test_downgrade_then_upgrade_round_trip(empty_engine) -> None:
    """Downgrading to base drops everything and upgrading again restores it."""
    await migrate.upgrade(empty_engine)
    await migrate.downgrade(empty_engine, "base")
    assert await _tables(empty_engine) <= {"alembic_version"}
    await migrate.upgrade(empty_engine)
    await migrate.check(empty_engine)
    assert set(Base.metadata.tables) <= await _tables(empty_engine)


async def test_upgrade_is_idempotent(empty_engine) -> None:
    """Running the upgrade twice is harmless (what `dispatcher migrate` relies on)."""
    await migrate.upgrade(empty_engine)
    await migrate.upgrade(empty_engine)
    async with empty_engine.connect() as conn:
        assert (
            await conn.execute(text("SELECT count(*) FROM alembic_version"))
        ).scalar() == 1


async def test_0002_and_0003_accept_what_operators_built_beforehand(
    empty_engine,
) -> None:
    """docs/operations.md tells operators of a large outbox to add the column and build
    the indexes CONCURRENTLY before upgrading; the migrations must accept them as they are."""
    await migrate.upgrade(empty_engine, "0001")
    async with empty_engine.connect() as conn:
        autocommit = await conn.execution_options(isolation_level="AUTOCOMMIT")
        await autocommit.execute(
            text(
                "CREATE INDEX CONCURRENTLY IF NOT EXISTS ix_deliveries_webhook_lanes"
                " ON deliveries (recipient, priority, next_attempt_at)"
                " WHERE channel = 'webhook' AND status IN ('pending', 'in_flight')"
            )
        )
        await autocommit.execute(
            text(
                "ALTER TABLE deliveries ADD COLUMN IF NOT EXISTS mirrored_at timestamptz"
            )
        )
        await autocommit.execute(
            text(
                "CREATE INDEX CONCURRENTLY IF NOT EXISTS ix_deliveries_unmirrored"
                " ON deliveries (dead_at) WHERE status = 'dead' AND mirrored_at IS NULL"
            )
        )
    await migrate.upgrade(empty_engine)
    await migrate.check(empty_engine)


async def test_0006_accepts_the_dead_indexes_built_beforehand(empty_engine) -> None:
    """The dead-only indexes of 0006, built CONCURRENTLY as docs/operations.md shows,
    are taken as they are by the migration."""
    await migrate.upgrade(empty_engine, "0005")
    async with empty_engine.connect() as conn:
        autocommit = await conn.execution_options(isolation_level="AUTOCOMMIT")
        for name, cols in (("event_id", "event_id"), ("created_at", "created_at, id")):
            await autocommit.execute(
                text(
                    f"CREATE INDEX CONCURRENTLY IF NOT EXISTS ix_deliveries_dead_{name}"
                    f" ON deliveries ({cols}) WHERE status = 'dead'"
                )
            )
    await migrate.upgrade(empty_engine)
    await migrate.check(empty_engine)


@pytest.mark.parametrize(
    "statement",
    ["UPDATE audit_log SET kind = 'x'", "DELETE FROM audit_log", "TRUNCATE audit_log"],
)
async def test_audit_log_is_append_only(engine, statement: str) -> None:
    """The database itself refuses to change or remove audit entries."""
    async with engine.begin() as conn:
        await conn.execute(
            text("INSERT INTO audit_log (kind) VALUES ('event.received')")
        )
    with pytest.raises(DBAPIError, match="append-only"):
        async with engine.begin() as conn:
            await conn.execute(text(statement))
    async with engine.connect() as conn:
        assert (
            await conn.execute(text("SELECT count(*) FROM audit_log"))
        ).scalar() == 1
