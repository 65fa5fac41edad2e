"""``dispatcher dlq reconcile``: the broker's dead-letter queues agree with the database
afterwards (real PostgreSQL and RabbitMQ)."""

import asyncio
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Sequence
from typing import Any

import aio_pika
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from dispatcher.delivery.mirror import declare, publish
from dispatcher.delivery.reconcile import Reconciled, reconcile
from dispatcher.events.kinds import ChannelKind
from dispatcher.outbox import dead
from dispatcher.outbox.dead import DeadFilter
from dispatcher.outbox.mirror import mark_mirrored, still_dead
from tests.conftest import AMQP_URL
from tests.replay.test_replay_store import dead_letters

pytestmark = [pytest.mark.postgres, pytest.mark.rabbitmq]


async def _queue_ids(
    amqp: aio_pika.abc.AbstractRobustConnection, prefix: str
) -> list[str]:
    """The delivery ids the email DLQ holds, read without removing them."""
    channel = await amqp.channel()
    queue = await channel.declare_queue(f"{prefix}.dlq.email", passive=True)
    held = []
    while (message := await queue.get(no_ack=False, fail=False)) is not None:
        held.append(message)
    ids = sorted(m.message_id or "" for m in held)
    await channel.close()  # unacked messages go back to the queue
    return ids


async def _mirror(
    engine: AsyncEngine,
    amqp: aio_pika.abc.AbstractRobustConnection,
    prefix: str,
    ids: Sequence[uuid.UUID],
) -> None:
    """Publish and mark these dead letters as the mirror does."""
    channel = await amqp.channel(publisher_confirms=True)
    exchange = await declare(channel, prefix)
    async with engine.connect() as sa:
        conn: Any = (await sa.get_raw_connection()).driver_connection
        rows = {row.id: row for row in await still_dead(conn, ids)}
        for delivery_id in ids:  # a repeated id is published again: a duplicate
            assert await publish(exchange, rows[delivery_id], wait=10)
        await mark_mirrored(conn, ids)
    await channel.close()


async def test_reconcile_removes_what_is_no_longer_dead_and_restores_what_is_missing(
    engine: AsyncEngine,
    amqp: aio_pika.abc.AbstractRobustConnection,
    names: dict[str, str],
    cleanup_broker: None,
    database: str,
) -> None:
    """After a discard and a replay the queue holds their messages, a duplicate, a
    foreign message, and lacks a dead letter: reconcile leaves exactly one message per
    delivery still dead, and the command does the same from an emptied queue."""
    prefix = names["queue_prefix"]
    kept, discarded, replayed, lost = await dead_letters(engine, 4)
    await _mirror(engine, amqp, prefix, [kept, kept, discarded, replayed])
    channel = await amqp.channel(publisher_confirms=True)
    exchange = await declare(channel, prefix)
    await exchange.publish(aio_pika.Message(b"{}", message_id="x"), "email")
    await channel.close()
    async with engine.begin() as sa:
        # Marked mirrored, but its message never reached the queue (deleted by hand).
        await sa.execute(
            text("UPDATE deliveries SET mirrored_at = now() WHERE id = :id"),
            {"id": lost},
        )
        await sa.execute(
            text("UPDATE deliveries SET status = 'pending' WHERE id = :id"),
            {"id": replayed},
        )
        conn: Any = (await sa.get_raw_connection()).driver_connection
        await dead.discard(
            conn,
            DeadFilter(delivery_ids=(discarded,)),
            as_of=await dead.now(conn),
            by="tester",
            reason="test",
        )
    assert len(await _queue_ids(amqp, prefix)) == 5

    [done] = await reconcile(AMQP_URL, prefix, engine, (ChannelKind.EMAIL,))
    assert done == Reconciled("email", found=5, kept=1, removed=4, restored=1)
    assert await _queue_ids(amqp, prefix) == sorted([str(kept), str(lost)])

    # Again: nothing to change (both messages published afresh, the old ones acked).
    [again] = await reconcile(AMQP_URL, prefix, engine, (ChannelKind.EMAIL,))
    assert again == Reconciled("email", found=2, kept=2, removed=0, restored=0)
    assert await _queue_ids(amqp, prefix) == sorted([str(kept), str(lost)])

    purge = await amqp.channel()
    await (await purge.declare_queue(f"{prefix}.dlq.email", passive=True)).purge()
    await purge.close()
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "dispatcher", "dlq", "reconcile", "--channel", "email"],
        capture_output=True,
        text=True,
        env={
            **os.environ,
            "DISPATCHER_DATABASE_URL": database,
            "DISPATCHER_AMQP_URL": AMQP_URL,
            "DISPATCHER_QUEUE_PREFIX": prefix,
        },
        timeout=60,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr
    assert "email: found=0 kept=0 removed=0 restored=2" in result.stdout
    assert await _queue_ids(amqp, prefix) == sorted([str(kept), str(lost)])
    bodies = json.dumps(result.stdout)
    assert "@example.org" not in bodies


async def test_what_reconcile_removes_stays_removed(
    engine: AsyncEngine,
    amqp: aio_pika.abc.AbstractRobustConnection,
    names: dict[str, str],
    cleanup_broker: None,
) -> None:
    """The acks of a large reconcile are applied before it lets go of the queue: a
    second run finds nothing (RabbitMQ dropped some not yet applied at close)."""
    prefix = names["queue_prefix"]
    channel = await amqp.channel(publisher_confirms=True)
    exchange = await declare(channel, prefix)
    for n in range(1500):  # foreign messages: not a delivery's id, so all removed
        await exchange.publish(aio_pika.Message(b"{}", message_id=f"x{n}"), "email")
    await channel.close()

    [first] = await reconcile(AMQP_URL, prefix, engine, (ChannelKind.EMAIL,))
    [second] = await reconcile(AMQP_URL, prefix, engine, (ChannelKind.EMAIL,))
    assert first == Reconciled("email", found=1500, kept=0, removed=1500, restored=0)
    assert second == Reconciled("email", found=0, kept=0, removed=0, restored=0)
