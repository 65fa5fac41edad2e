"""Guards for library internals that only a real broker or database can show (see
tests/unit/test_library_internals.py for the rest and for the failure message)."""

import asyncio
from dataclasses import dataclass

import aio_pika
import aiormq
import asyncpg
import pytest
from aiormq.abc import DeliveredMessage
from sqlalchemy.ext.asyncio import AsyncEngine

from dispatcher.db.engine import wrap_db_errors
from dispatcher.db.sql import from_row
from dispatcher.errors import StorageConflict
from tests.unit.test_library_internals import broken
from tests.waiting import wait_for


@pytest.mark.rabbitmq
async def test_aiormq_calls_a_swapped_consumer_with_the_bare_delivery(
    amqp: aio_pika.abc.AbstractRobustConnection,
) -> None:
    """A callback put in place of aio-pika's in ``Channel.consumers`` gets the next
    delivery as a ``DeliveredMessage``, and acks through its channel (the ingest path)."""
    channel = await amqp.channel()
    queue = await channel.declare_queue(exclusive=True, auto_delete=True)
    swapped = asyncio.Event()
    lean: list[DeliveredMessage] = []

    async def on_delivery(raw: DeliveredMessage) -> None:
        lean.append(raw)

    async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        raw_channel, tag = message.channel, message.consumer_tag
        assert isinstance(raw_channel, aiormq.Channel), broken(
            "aio-pika", "IncomingMessage.channel is the aiormq channel"
        )
        assert tag in raw_channel.consumers, broken("aiormq", "Channel.consumers[tag]")
        raw_channel.consumers[tag] = on_delivery
        await message.ack()
        swapped.set()

    try:
        await queue.consume(on_message)
        exchange = channel.default_exchange
        await exchange.publish(aio_pika.Message(b"first"), routing_key=queue.name)
        await wait_for(swapped, "aio-pika's callback, the first time", timeout=10)
        second = aio_pika.Message(b"second", message_id="m-2", headers={"k": "v"})
        await exchange.publish(second, routing_key=queue.name)
        await wait_for(lambda: lean, "the swapped callback", timeout=10)
        (raw,) = lean
        got = (
            raw.body,
            raw.routing_key,
            raw.header.properties.message_id,
            raw.header.properties.headers,
            isinstance(raw.delivery_tag, int),
            isinstance(raw.channel, aiormq.Channel),
        )
        assert got == (b"second", queue.name, "m-2", {"k": "v"}, True, True), broken(
            "aiormq", "calling Channel.consumers[tag] with a DeliveredMessage"
        )
        assert raw.delivery_tag is not None
        await raw.channel.basic_ack(raw.delivery_tag, multiple=True)
    finally:
        await channel.close()


@dataclass(frozen=True, slots=True)
class _Row:
    id: int
    name: str
    note: str | None = None


@pytest.mark.postgres
async def test_from_row_reads_asyncpg_records_by_name(engine: AsyncEngine) -> None:
    """A row becomes a dataclass by column name whatever the columns' order, from an
    asyncpg ``Record`` too (its ``keys()`` is a one-pass iterator, not a view)."""
    async with engine.connect() as conn:
        raw = (await conn.get_raw_connection()).driver_connection
        assert isinstance(raw, asyncpg.Connection)
        shuffled = await raw.fetchrow("SELECT 'x' AS note, 'm' AS name, 1 AS id")
        partial = await raw.fetchrow("SELECT 'n' AS name, 0 AS extra, 7 AS id")
    assert from_row(_Row, shuffled) == _Row(1, "m", "x")
    assert from_row(_Row, partial) == _Row(7, "n")


@pytest.mark.postgres
async def test_raw_asyncpg_connection_behind_the_pool(engine: AsyncEngine) -> None:
    """The pool's raw connection is asyncpg's, decodes jsonb to dicts (SQLAlchemy set
    the codec), and refuses an unencodable value with an error read as refused data."""
    async with engine.connect() as conn:
        raw = (await conn.get_raw_connection()).driver_connection
        assert isinstance(raw, asyncpg.Connection), broken(
            "sqlalchemy", "get_raw_connection().driver_connection"
        )
        assert await raw.fetchval("""SELECT '{"a": 1}'::jsonb""") == {"a": 1}, broken(
            "sqlalchemy", "the asyncpg dialect's jsonb codec on the raw connection"
        )
        # asyncpg 0.32 raises its public DataError here, not exceptions._base's.
        with pytest.raises(StorageConflict), wrap_db_errors():
            await raw.fetchval("SELECT $1::text", "\ud800")
