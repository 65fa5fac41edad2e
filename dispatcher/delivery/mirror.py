"""Mirror dead-lettered deliveries to durable per-channel RabbitMQ queues.

The database row (``status = dead``) is the authoritative dead-letter queue; the mirror is
for operators' RabbitMQ tooling and alerting. It is an outbox of its own: a dead letter is
published when the recorder commits it, marked ``mirrored_at`` once the broker confirms,
and a periodic sweep publishes every dead row still unmarked (a crash between the commit
and the publish, a broker outage), so the mirror catches up with the database. At least
once: consumers de-duplicate by ``message_id`` (the delivery id).

The mirror runs in its own task. The recorder only hands dead letters over, so a slow or
absent broker never holds up the recording of outcomes, whose leases would otherwise expire.
"""

import asyncio
import contextlib
import json
import time
from collections.abc import Sequence
from uuid import UUID

import aio_pika
import structlog
from aio_pika.abc import AbstractExchange, AbstractRobustConnection
from sqlalchemy.ext.asyncio import AsyncEngine

from dispatcher import topology
from dispatcher.db.engine import wrap_db_errors
from dispatcher.db.kept import KeptConnection
from dispatcher.errors import DispatcherError
from dispatcher.events.kinds import ChannelKind
from dispatcher.outbox.mirror import mark_mirrored, unmirrored
from dispatcher.outbox.outcomes import DeadLettered

log = structlog.get_logger("dispatcher.delivery")


class DeadLetterMirror:
    """Publishes one small message (ids and error class, no PII) per dead letter."""

    def __init__(
        self,
        amqp_url: str,
        queue_prefix: str,
        engine: AsyncEngine,
        *,
        sweep_interval: float = 30.0,
        grace_seconds: float = 10.0,
        batch: int = 500,
        publish_timeout: float = 5.0,
    ) -> None:
        self._url = amqp_url
        self._prefix = queue_prefix
        self._link = KeptConnection(engine)
        self._sweep_interval = sweep_interval
        self._grace = grace_seconds
        self._batch = batch
        self._timeout = publish_timeout
        self._connection: AbstractRobustConnection | None = None
        self._exchange: AbstractExchange | None = None
        self._pending: list[DeadLettered] = []
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        #: Mirror messages the broker confirmed; for tests and metrics.
        self.confirmed = 0

    async def start(self) -> None:
        self._connection = await aio_pika.connect_robust(self._url, timeout=10)
        channel = await self._connection.channel(publisher_confirms=True)
        self._exchange = await declare(channel, self._prefix)
        self._task = asyncio.create_task(self._run(), name="dlq-mirror")

    async def stop(self) -> None:
        """Publish what was handed over (once), then close; the sweep has the rest."""
        self._stopping = True
        self._wakeup.set()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
        await self._link.close()
        if self._connection is not None:
            await self._connection.close()

    def add(self, dead: Sequence[DeadLettered]) -> None:
        """Hand over freshly dead-lettered deliveries; never waits."""
        self._pending.extend(dead)
        self._wakeup.set()

    async def _run(self) -> None:
        next_sweep = time.monotonic()
        while True:
            now = time.monotonic()
            if not self._pending and not self._stopping and now < next_sweep:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), next_sweep - now)
                self._wakeup.clear()
            batch, self._pending = self._pending, []
            try:
                if batch:
                    await self._mirror(batch)
                if self._stopping:
                    return
                if time.monotonic() >= next_sweep:
                    next_sweep = time.monotonic() + self._sweep_interval
                    await self._sweep()
            except Exception as exc:  # noqa: BLE001 - the loop must outlive any bug
                # What was not marked is found again by the next sweep.
                await self._link.close(broken=True)
                log.error(
                    "dispatcher.delivery.dlq_mirror_bug", error_type=type(exc).__name__
                )
                if self._stopping:
                    return

    async def _sweep(self) -> None:
        """Publish dead letters the broker never confirmed, oldest first.

        Each batch is one transaction: its rows stay locked while they are published and
        marked, so replicas sweeping at the same moment take different rows.
        """
        while not self._stopping:
            try:
                with wrap_db_errors():
                    conn = await self._link.driver()
                    async with conn.transaction():
                        rows = await unmirrored(
                            conn, grace_seconds=self._grace, limit=self._batch
                        )
                        if rows:
                            log.info(
                                "dispatcher.delivery.dlq_sweep", unmirrored=len(rows)
                            )
                        confirmed = await self._publish_all(rows)
                        if confirmed:
                            await mark_mirrored(conn, confirmed)
            except DispatcherError as exc:
                # Published but unmarked rows go again at the next sweep: duplicates,
                # not losses.
                await self._link.close(broken=True)
                log.warning(
                    "dispatcher.delivery.dlq_sweep_failed",
                    error_type=type(exc).__name__,
                )
                return
            self.confirmed += len(confirmed)
            if len(confirmed) < len(rows) or len(rows) < self._batch:
                return  # none left, or the broker refused some: the next sweep retries

    async def _mirror(self, rows: Sequence[DeadLettered]) -> None:
        """Publish freshly dead-lettered rows, then mark what the broker confirmed."""
        confirmed = await self._publish_all(rows)
        if confirmed:
            await self._mark(confirmed)
        self.confirmed += len(confirmed)

    async def _publish_all(self, rows: Sequence[DeadLettered]) -> list[UUID]:
        """Publish concurrently; the ids the broker confirmed."""
        results = await asyncio.gather(*(self._publish(row) for row in rows))
        failed = [row.id for row, ok in zip(rows, results, strict=True) if not ok]
        if failed:
            log.warning(
                "dispatcher.delivery.dlq_mirror_failed",
                failed=len(failed),
                first_delivery_id=str(failed[0]),
            )
        return [row.id for row, ok in zip(rows, results, strict=True) if ok]

    async def _mark(self, ids: list[UUID]) -> None:
        try:
            with wrap_db_errors():
                await mark_mirrored(await self._link.driver(), ids)
        except DispatcherError as exc:
            # Unmarked rows are published again by a later sweep: a duplicate, not a loss.
            await self._link.close(broken=True)
            log.warning(
                "dispatcher.delivery.dlq_mark_failed",
                error_type=type(exc).__name__,
                confirmed=len(ids),
            )

    async def _publish(self, row: DeadLettered) -> bool:
        if self._exchange is None:
            return False
        return await publish(self._exchange, row, wait=self._timeout)


def mirror_message(row: DeadLettered) -> aio_pika.Message:
    """The mirror's message for a dead letter: ids and error class, no PII."""
    body = json.dumps(
        {
            "delivery_id": str(row.id),
            "event_id": str(row.event_id),
            "channel": row.channel,
            "attempts": row.attempts,
            "error_class": row.error_class,
        }
    ).encode()
    return aio_pika.Message(
        body,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        message_id=str(row.id),
        content_type="application/json",
    )


async def declare(
    channel: aio_pika.abc.AbstractChannel, prefix: str
) -> AbstractExchange:
    """The mirror's exchange and one bound quorum queue per channel (idempotent)."""
    exchange = await channel.declare_exchange(
        topology.dlq_exchange(prefix), aio_pika.ExchangeType.DIRECT, durable=True
    )
    for kind in ChannelKind:
        queue = await channel.declare_queue(
            topology.channel_dlq(prefix, kind),
            durable=True,
            arguments={"x-queue-type": "quorum"},
        )
        await queue.bind(exchange, routing_key=kind.value)
    return exchange


async def publish(
    exchange: AbstractExchange, row: DeadLettered, *, wait: float
) -> bool:
    """Publish one dead letter's mirror message (confirmed within ``wait`` s); True
    once the broker confirmed it."""
    try:
        await exchange.publish(
            mirror_message(row), routing_key=row.channel, timeout=wait
        )
    except (
        TimeoutError,
        OSError,
        aio_pika.exceptions.AMQPError,
        aio_pika.exceptions.ChannelInvalidStateError,  # reconnecting
    ):
        return False
    return True
