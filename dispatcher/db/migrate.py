"""Run Alembic migrations from the CLI and the tests."""

from collections.abc import Callable

from alembic import command
from alembic.config import Config
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from dispatcher.db.engine import wrap_db_errors
from dispatcher.db.revisions import migrations_dir

__all__ = ["alembic_config", "check", "downgrade", "migrations_dir", "upgrade"]


def alembic_config(database_url: str | None = None) -> Config:
    """An Alembic config pointing at our migrations, with no ini file needed."""
    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    if database_url:
        cfg.attributes["database_url"] = database_url
    return cfg


async def upgrade(engine: AsyncEngine, revision: str = "head") -> None:
    """Upgrade the database to ``revision`` (all of it by default)."""
    await _run(engine, lambda cfg: command.upgrade(cfg, revision))


async def downgrade(engine: AsyncEngine, revision: str) -> None:
    """Downgrade the database to ``revision`` (``base`` drops everything)."""
    await _run(engine, lambda cfg: command.downgrade(cfg, revision))


async def check(engine: AsyncEngine) -> None:
    """Fail when the models and the migrations disagree (``alembic check``)."""
    await _run(engine, command.check)


async def _run(engine: AsyncEngine, action: Callable[[Config], object]) -> None:
    def run(connection: Connection) -> None:
        cfg = alembic_config()
        cfg.attributes["connection"] = connection
        action(cfg)

    with wrap_db_errors():
        async with engine.begin() as conn:
            await conn.run_sync(run)
