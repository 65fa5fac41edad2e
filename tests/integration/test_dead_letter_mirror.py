"""The RabbitMQ mirror of dead letters catches up with the database (real PostgreSQL and
RabbitMQ): what a crash or a broker outage kept from the mirror is published by the sweep."""

import asyncio
import json
import uuid

import aio_pika
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from structlog.testing import capture_logs

from dispatcher.delivery.mirror import DeadLetterMirror
from dispatcher.outbox.outcomes import DeadLettered
from tests.conftest import AMQP_URL
from tests.integration.test_outbox_store import seed, seed_many
from tests.waiting import wait_for

pytestmark = [pytest.mark.postgres, pytest.mark.rabbitmq]

#: Every row of a channel, as the recorder leaves a dead letter (without its mirror mark).
_KILL = text(
    """
    UPDATE deliveries SET status = 'dead', dead_at = now() - interval '1 minute',
           attempts = 3, last_error_class = 'provider_transient'
    WHERE channel = :channel
    """
)


async def _dead_letter(
    engine: AsyncEngine, *, channel: str, recipient: str = "a@example.org"
) -> uuid.UUID:
    """A dead row with no mirror message: what a crash right after its commit leaves."""
    delivery = await seed(engine, channel=channel, recipient=recipient)
    async with engine.begin() as conn:
        await conn.execute(_KILL, {"channel": channel})
    return delivery


async def _mirrored_at(engine: AsyncEngine, delivery: uuid.UUID) -> object:
    async with engine.connect() as conn:
        return (
            await conn.execute(
                text("SELECT mirrored_at FROM deliveries WHERE id = :id"),
                {"id": delivery},
            )
        ).scalar_one()


async def _drain(queue: aio_pika.abc.AbstractQueue, settle: float = 0.5) -> list[str]:
    """Delivery ids of every message in the queue, until none came for ``settle`` s."""
    ids: list[str] = []
    loop = asyncio.get_running_loop()
    quiet_since = loop.time()
    while loop.time() - quiet_since < settle:
        message = await queue.get(fail=False)
        if message is None:
            await asyncio.sleep(0.05)
            continue
        ids.append(json.loads(message.body)["delivery_id"])
        await message.ack()
        quiet_since = loop.time()
    return ids


async def test_the_sweep_mirrors_dead_letters_the_broker_never_got_once(
    engine: AsyncEngine,
    amqp: aio_pika.abc.AbstractRobustConnection,
    names: dict[str, str],
    cleanup_broker: None,
) -> None:
    email = await _dead_letter(engine, channel="email")
    webhook = await _dead_letter(engine, channel="webhook", recipient="case-system")
    assert await _mirrored_at(engine, email) is None
    mirror = DeadLetterMirror(
        AMQP_URL, names["queue_prefix"], engine, sweep_interval=0.2, grace_seconds=0
    )
    await mirror.start()
    try:
        await wait_for(lambda: mirror.confirmed >= 2, "both dead letters confirmed")
        # An observation window, not a wait: several more sweeps publish nothing twice.
        await asyncio.sleep(0.6)
    finally:
        await mirror.stop()
    assert mirror.confirmed == 2
    assert await _mirrored_at(engine, email) is not None
    assert await _mirrored_at(engine, webhook) is not None
    channel = await amqp.channel()
    prefix = names["queue_prefix"]
    email_queue = await channel.declare_queue(f"{prefix}.dlq.email", passive=True)
    webhook_queue = await channel.declare_queue(f"{prefix}.dlq.webhook", passive=True)
    assert await _drain(email_queue) == [str(email)]
    assert await _drain(webhook_queue) == [str(webhook)]


async def test_a_dead_letter_the_broker_refused_is_not_marked_and_goes_again(
    engine: AsyncEngine,
    amqp: aio_pika.abc.AbstractRobustConnection,
    names: dict[str, str],
    cleanup_broker: None,
) -> None:
    """The broker refuses the publish (its exchange was deleted: a real refusal, no mock):
    the row stays unmarked, and the next replica's sweep publishes the dead letter."""
    prefix = names["queue_prefix"]
    first = DeadLetterMirror(
        AMQP_URL, prefix, engine, sweep_interval=60, grace_seconds=0
    )
    await first.start()  # its first sweep finds nothing; the next is a minute away
    channel = await amqp.channel()
    try:
        await channel.exchange_delete(f"{prefix}.dlq")
        delivery = await _dead_letter(engine, channel="sms", recipient="+15550000001")
        with capture_logs() as logs:
            first.add(
                [
                    DeadLettered(
                        delivery, uuid.uuid4(), "sms", 3, "provider_transient", None
                    )
                ]
            )
            await wait_for(
                lambda: any(
                    e["event"] == "dispatcher.delivery.dlq_mirror_failed" for e in logs
                ),
                "the refused publish",
                timeout=10,
            )
        assert first.confirmed == 0
    finally:
        await first.stop()
    assert await _mirrored_at(engine, delivery) is None

    second = DeadLetterMirror(
        AMQP_URL, prefix, engine, sweep_interval=0.2, grace_seconds=0
    )
    await second.start()  # declares the exchange and bindings again
    try:
        await wait_for(lambda: second.confirmed, "the second replica's sweep")
    finally:
        await second.stop()
    assert second.confirmed == 1
    assert await _mirrored_at(engine, delivery) is not None
    queue = await channel.declare_queue(f"{prefix}.dlq.sms", passive=True)
    assert await _drain(queue) == [str(delivery)]


async def test_replicas_sweeping_at_once_mirror_each_dead_letter_once(
    engine: AsyncEngine,
    amqp: aio_pika.abc.AbstractRobustConnection,
    names: dict[str, str],
    cleanup_broker: None,
) -> None:
    """Two replicas start together and both sweep at once: the sweep's row locks keep them
    on different rows, so no dead letter is mirrored twice."""
    await seed_many(engine, 400, channel="email", recipient="a@example.org")
    async with engine.begin() as conn:
        await conn.execute(_KILL, {"channel": "email"})
    mirrors = [
        DeadLetterMirror(
            AMQP_URL, names["queue_prefix"], engine, sweep_interval=0.2, grace_seconds=0
        )
        for _ in range(2)
    ]
    await asyncio.gather(*(m.start() for m in mirrors))
    try:
        await wait_for(
            lambda: sum(m.confirmed for m in mirrors) >= 400,
            "400 dead letters confirmed",
        )
        # An observation window, not a wait: more sweeps by both publish nothing twice.
        await asyncio.sleep(0.6)
    finally:
        await asyncio.gather(*(m.stop() for m in mirrors))
    assert sum(m.confirmed for m in mirrors) == 400
    channel = await amqp.channel()
    queue = await channel.declare_queue(
        f"{names['queue_prefix']}.dlq.email", passive=True
    )
    ids = await _drain(queue, settle=1.0)
    assert len(ids) == len(set(ids)) == 400
    async with engine.connect() as conn:
        left = await conn.execute(
            text("SELECT count(*) FROM deliveries WHERE mirrored_at IS NULL")
        )
        assert left.scalar_one() == 0
