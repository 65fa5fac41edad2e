"""Shared fixtures: real PostgreSQL (template database per session, fresh copy per test),
real RabbitMQ (fresh names per test) and the local sink servers. In CI a missing service
fails; elsewhere it skips."""

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, NoReturn

import aio_pika
import asyncpg
import pytest
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from dispatcher.db.engine import create_engine
from dispatcher.db.migrate import upgrade
from dispatcher.settings import Settings
from dispatcher.sinks.smtp import SmtpSink
from dispatcher.sinks.twilio import TwilioSink
from dispatcher.sinks.webhook import WebhookSink
from tests.channels import TWILIO_SID, TWILIO_TOKEN

DATABASE_URL = os.environ.get(
    "DISPATCHER_DATABASE_URL",
    "postgresql+asyncpg://dispatcher:dispatcher@127.0.0.1:5432/dispatcher",
)
AMQP_URL = os.environ.get("DISPATCHER_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def unavailable(what: str, exc: BaseException) -> NoReturn:
    message = f"{what} is not reachable ({type(exc).__name__}); start it with scripts/services.sh"
    if IN_CI:
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def database_url(name: str) -> str:
    return (
        make_url(DATABASE_URL).set(database=name).render_as_string(hide_password=False)
    )


def _asyncpg_dsn(name: str) -> str:
    return database_url(name).replace("postgresql+asyncpg://", "postgresql://")


async def _admin(sql: str) -> None:
    conn = await asyncpg.connect(_asyncpg_dsn("postgres"), timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def template_database() -> Iterator[str]:
    """A database migrated to head once per session; tests copy it."""
    name = f"dispatcher_tpl_{uuid.uuid4().hex[:12]}"

    async def create() -> None:
        await _admin(f'CREATE DATABASE "{name}"')
        engine = create_engine(database_url(name), pool_size=1)
        try:
            await upgrade(engine)
        finally:
            await engine.dispose()

    try:
        asyncio.run(create())
    except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
        unavailable("PostgreSQL", exc)
    yield name
    asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
async def database(template_database: str) -> AsyncIterator[str]:
    """The URL of a fresh database at head, dropped after the test."""
    name = f"dispatcher_t_{uuid.uuid4().hex[:12]}"
    await _admin(f'CREATE DATABASE "{name}" TEMPLATE "{template_database}"')
    yield database_url(name)
    await drop_database(name)


async def drop_database(name: str) -> None:
    """Drop a test database; retried, since an autovacuum worker (a superuser process that
    our role may not terminate) can briefly hold it right after a test's writes."""
    for _ in range(50):
        try:
            await _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        except asyncpg.InsufficientPrivilegeError:
            await asyncio.sleep(0.1)
        else:
            return
    await _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
async def engine(database: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(database, pool_size=5)
    yield engine
    await engine.dispose()


@pytest.fixture
async def amqp() -> AsyncIterator[aio_pika.abc.AbstractRobustConnection]:
    """A connection for the test's own declarations and inspection."""
    try:
        connection = await aio_pika.connect_robust(AMQP_URL, timeout=5)
    except (TimeoutError, OSError, aio_pika.exceptions.AMQPError) as exc:
        unavailable("RabbitMQ", exc)
    yield connection
    await connection.close()


@pytest.fixture
def names() -> dict[str, str]:
    """Fresh exchange and queue-prefix names, so tests never share broker state."""
    tag = uuid.uuid4().hex[:10]
    return {"exchange": f"test.notifications.{tag}", "queue_prefix": f"test.{tag}"}


@pytest.fixture
async def cleanup_broker(
    amqp: aio_pika.abc.AbstractRobustConnection, names: dict[str, str]
) -> AsyncIterator[None]:
    """Delete the test's queues and exchanges afterwards."""
    yield
    channel = await amqp.channel()
    prefix = names["queue_prefix"]
    for queue in (
        f"{prefix}.ingest",
        f"{prefix}.ingest.dlq",
        f"{prefix}.dlq.email",
        f"{prefix}.dlq.sms",
        f"{prefix}.dlq.webhook",
    ):
        await channel.queue_delete(queue)
    for exchange in (names["exchange"], f"{prefix}.ingest.dlx", f"{prefix}.dlq"):
        await channel.exchange_delete(exchange)
    await channel.close()


@pytest.fixture
def make_settings(names: dict[str, str]) -> Callable[..., Settings]:
    """Settings pointing at the test's database and broker names; overrides as kwargs."""

    def make(database: str = DATABASE_URL, **overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "database_url": database,
            "amqp_url": AMQP_URL,
            "exchange": names["exchange"],
            "queue_prefix": names["queue_prefix"],
            **overrides,
        }
        return Settings(**values)

    return make


@pytest.fixture
async def smtp_sink() -> AsyncIterator[SmtpSink]:
    async with SmtpSink() as sink:
        yield sink


@pytest.fixture
async def twilio_sink() -> AsyncIterator[TwilioSink]:
    async with TwilioSink(TWILIO_SID, TWILIO_TOKEN) as sink:
        yield sink


@pytest.fixture
async def webhook_sink() -> AsyncIterator[WebhookSink]:
    async with WebhookSink(seed=1234) as sink:
        yield sink
