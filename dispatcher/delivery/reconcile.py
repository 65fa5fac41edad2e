"""Make the broker's dead-letter queues agree with the database (``dispatcher dlq
reconcile``).

Per channel: every message of ``<prefix>.dlq.<channel>`` is taken and held unacked; the
messages of deliveries still dead are published again (once each, fresh from their row),
the dead letters the queue lacked are published too, and only once the broker confirmed
every publish are the held messages acked, which removes those of deliveries no longer
dead (replayed, delivered, discarded), duplicates and foreign messages. If anything fails
the held messages go back to the queue (nack with requeue): a reconcile that stops
half-way loses nothing and leaves duplicates at worst (consumers de-duplicate by
``message_id``). docs/operations.md says how it behaves with the mirror publishing
meanwhile.
"""

import asyncio
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import aio_pika
import structlog
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractIncomingMessage
from sqlalchemy.ext.asyncio import AsyncEngine

from dispatcher import topology
from dispatcher.db.engine import wrap_db_errors
from dispatcher.delivery.mirror import declare, publish
from dispatcher.errors import PublishError
from dispatcher.events.kinds import ChannelKind
from dispatcher.outbox import dead
from dispatcher.outbox.mirror import absent, mark_mirrored, still_dead
from dispatcher.outbox.outcomes import DeadLettered

log = structlog.get_logger("dispatcher.delivery")

#: Seconds the broker has to confirm one publish.
PUBLISH_WAIT = 10.0


@dataclass(frozen=True, slots=True)
class Reconciled:
    """What reconciling one channel's queue did."""

    channel: str
    #: Messages the queue held, and of those, the ones of deliveries still dead (kept).
    found: int
    kept: int
    #: Messages removed: deliveries no longer dead, duplicates, foreign messages.
    removed: int
    #: Dead letters the queue lacked, published.
    restored: int


def _delivery_id(message: AbstractIncomingMessage) -> UUID | None:
    try:
        return UUID(message.message_id or "")
    except ValueError:
        return None


async def _drain(queue: aio_pika.abc.AbstractQueue) -> list[AbstractIncomingMessage]:
    """Every message the queue holds now, unacked (held until acked or nacked)."""
    held: list[AbstractIncomingMessage] = []
    while (message := await queue.get(no_ack=False, fail=False)) is not None:
        held.append(message)
    return held


async def _settled(queue: aio_pika.abc.AbstractQueue) -> None:
    """Until the broker has applied the acks just sent.

    A quorum queue applies acks asynchronously; a connection closed right after them
    loses those not yet applied, and their messages come back (RabbitMQ 3.10 here: ~5 %
    of 1,500, and most of them when acked with ``multiple``). A ``basic.get`` on the same
    channel is answered after them. A message it finds was published meanwhile: it goes
    back (a lost nack returns it too).
    """
    message = await queue.get(no_ack=False, fail=False)
    if message is not None:
        await message.nack(requeue=True)


async def _republish(
    exchange: AbstractExchange, rows: list[DeadLettered], kind: ChannelKind
) -> None:
    results = await asyncio.gather(
        *(publish(exchange, row, wait=PUBLISH_WAIT) for row in rows)
    )
    if not all(results):
        raise PublishError(
            f"the broker did not confirm {results.count(False)} of {len(rows)} "
            f"republished {kind.value} dead letter(s); the queue is unchanged "
            "(run reconcile again)"
        )


async def _channel(
    amqp: AbstractChannel,
    exchange: AbstractExchange,
    engine: AsyncEngine,
    prefix: str,
    kind: ChannelKind,
) -> Reconciled:
    queue = await amqp.get_queue(topology.channel_dlq(prefix, kind), ensure=True)
    with wrap_db_errors():
        async with engine.connect() as sa:
            conn: Any = (await sa.get_raw_connection()).driver_connection
            since = await dead.now(conn)  # before the drain: see _ABSENT
            held = await _drain(queue)
            present = {i for m in held if (i := _delivery_id(m)) is not None}
            keep = [
                r
                for r in await still_dead(conn, list(present))
                if r.channel == kind.value
            ]
            missing = await absent(
                conn, channel=kind.value, present=list(present), since=since
            )
    try:
        await _republish(exchange, [*keep, *missing], kind)
    except BaseException:
        for message in held:
            await message.nack(requeue=True)
        raise
    for message in held:
        await message.ack()
    await _settled(queue)
    if missing:
        with wrap_db_errors():
            async with engine.connect() as sa:
                raw: Any = (await sa.get_raw_connection()).driver_connection
                await mark_mirrored(raw, [row.id for row in missing])
    result = Reconciled(
        kind.value, len(held), len(keep), len(held) - len(keep), len(missing)
    )
    log.info(
        "dispatcher.delivery.dlq_reconciled",
        channel=kind.value,
        found=result.found,
        kept=result.kept,
        removed=result.removed,
        restored=result.restored,
    )
    return result


async def reconcile(
    amqp_url: str,
    prefix: str,
    engine: AsyncEngine,
    channels: tuple[ChannelKind, ...] = tuple(ChannelKind),
) -> list[Reconciled]:
    """Reconcile these channels' dead-letter queues with the database, one by one.

    Raises:
        PublishError: the broker is unreachable or did not confirm a publish.
        StorageUnavailable: the database is unreachable.
    """
    try:
        connection = await aio_pika.connect(amqp_url, timeout=10)
    except (OSError, aio_pika.exceptions.AMQPError, TimeoutError) as exc:
        raise PublishError("cannot reach RabbitMQ") from exc
    async with connection:
        amqp = await connection.channel(publisher_confirms=True)
        exchange = await declare(amqp, prefix)
        return [
            await _channel(amqp, exchange, engine, prefix, kind) for kind in channels
        ]
