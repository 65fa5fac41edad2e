"""Readiness of the dependencies, for ``dispatcher check`` and container health checks."""

import aio_pika
from alembic.script import ScriptDirectory
from sqlalchemy import text

from dispatcher.db.engine import create_engine, wrap_db_errors
from dispatcher.db.migrate import alembic_config
from dispatcher.errors import DispatcherError
from dispatcher.settings import Settings


async def check_dependencies(settings: Settings) -> list[str]:
    """Problems found (empty when ready); never raises for an unreachable dependency."""
    problems: list[str] = []
    engine = create_engine(
        settings.database_url.get_secret_value(),
        pool_size=1,
        application_name="dispatcher-check",
    )
    try:
        with wrap_db_errors():
            async with engine.connect() as conn:
                current = (
                    await conn.execute(text("SELECT version_num FROM alembic_version"))
                ).scalar()
        head = ScriptDirectory.from_config(alembic_config()).get_current_head()
        if current != head:
            problems.append(
                f"database schema is at {current}, expected {head}: run 'dispatcher migrate'"
            )
    except DispatcherError as exc:
        problems.append(str(exc))
    finally:
        await engine.dispose()
    try:
        connection = await aio_pika.connect(
            settings.amqp_url.get_secret_value(), timeout=5
        )
        await connection.close()
    except (TimeoutError, aio_pika.exceptions.AMQPError, OSError) as exc:
        problems.append(f"RabbitMQ is unavailable ({type(exc).__name__})")
    return problems
