"""Mirror dead-lettered deliveries to durable per-channel RabbitMQ queues.

The database row (``status = dead``) is the authoritative dead-letter queue; the mirror is
for operators' RabbitMQ tooling and alerting. A failed mirror publish is logged and does
not undo the dead-lettering: replay keeps the two in agreement.
"""

import json
from collections.abc import Sequence

import aio_pika
import structlog
from aio_pika.abc import AbstractExchange, AbstractRobustConnection

from dispatcher import topology
from dispatcher.events.kinds import ChannelKind
from dispatcher.outbox.store import DeadLettered

log = structlog.get_logger("dispatcher.delivery")


class DeadLetterMirror:
    """Publishes one small message (ids and error class, no PII) per dead letter."""

    def __init__(self, amqp_url: str, queue_prefix: str) -> None:
        self._url = amqp_url
        self._prefix = queue_prefix
        self._connection: AbstractRobustConnection | None = None
        self._exchange: AbstractExchange | None = None

    async def start(self) -> None:
        self._connection = await aio_pika.connect_robust(self._url, timeout=10)
        channel = await self._connection.channel(publisher_confirms=True)
        self._exchange = await channel.declare_exchange(
            topology.dlq_exchange(self._prefix),
            aio_pika.ExchangeType.DIRECT,
            durable=True,
        )
        for kind in ChannelKind:
            queue = await channel.declare_queue(
                topology.channel_dlq(self._prefix, kind),
                durable=True,
                arguments={"x-queue-type": "quorum"},
            )
            await queue.bind(self._exchange, routing_key=kind.value)

    async def stop(self) -> None:
        if self._connection is not None:
            await self._connection.close()

    async def publish(self, dead: Sequence[DeadLettered]) -> None:
        if self._exchange is None:
            return
        for row in dead:
            body = json.dumps(
                {
                    "delivery_id": str(row.id),
                    "event_id": str(row.event_id),
                    "channel": row.channel,
                    "attempts": row.attempts,
                    "error_class": row.error_class,
                }
            ).encode()
            try:
                await self._exchange.publish(
                    aio_pika.Message(
                        body,
                        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                        message_id=str(row.id),
                        content_type="application/json",
                    ),
                    routing_key=row.channel,
                    timeout=5,
                )
            except (TimeoutError, aio_pika.exceptions.AMQPError, OSError) as exc:
                log.warning(
                    "dispatcher.delivery.dlq_mirror_failed",
                    delivery_id=str(row.id),
                    error_type=type(exc).__name__,
                )
