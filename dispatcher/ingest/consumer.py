"""The ingest consumers: a plain aio-pika callback on the ingest queue, FastStream on its
dead-letter queue; both persist first.

Acks are manual: a message is acked only after the transaction holding it commits; while
PostgreSQL is away the writers retry and the prefetch window fills, so the broker stops
sending instead of us nack-looping (FastStream's default policy would reject on any
exception and dead-letter, or drop, valid events).

The ingest queue is the hot path, so it skips FastStream's per-message pipeline (context
scopes, middlewares, handler wrappers: most of the consumer's CPU in the profile). Its
callback parses the message and appends it to the batcher without waiting: the batch size
is set by what is waiting, not by how many handlers are in flight. FastStream still owns
the connection, the topology and the low-volume dead-letter subscriber.

It skips aio-pika's per-message work too (an ``IncomingMessage`` and a second task for
each delivery): aio-pika's robust queue registers the consumer, and restores it after a
reconnect, as usual; the first delivery it hands over on a channel replaces, on that
channel, aio-pika's callback with ours, which aiormq then calls with the bare delivery.
"""

import asyncio

from aio_pika.abc import AbstractIncomingMessage, AbstractRobustQueue
from aio_pika.exceptions import ChannelInvalidStateError
from faststream import AckPolicy, StreamMessage
from faststream.rabbit import (
    Channel,
    ExchangeType,
    QueueType,
    RabbitBroker,
    RabbitExchange,
    RabbitQueue,
)
from faststream.rabbit.subscriber import RabbitSubscriber

from dispatcher import topology
from dispatcher.ingest.intake import Intake
from dispatcher.settings import Settings
from dispatcher.telemetry import metrics


async def _raw_message(
    msg: StreamMessage[AbstractIncomingMessage],
) -> AbstractIncomingMessage:
    """Hand the handler the aio-pika message itself. FastStream's decoder would json-parse an
    ``application/json`` body and raise before our handler on a malformed one, leaving it
    unacked; parsing is ours alone. With ``apply_types=False`` on the broker (no dependency
    injection per message) the handler is called with exactly what this returns."""
    return msg.raw_message


class IngestConsumer:
    """Both consumers: started after the broker connects, stopped before it closes."""

    def __init__(
        self, broker: RabbitBroker, settings: Settings, intake: Intake
    ) -> None:
        prefix = settings.queue_prefix
        self._broker = broker
        self._intake = intake
        self._bindings = settings.bindings or ("#",)
        self._exchange = RabbitExchange(
            settings.exchange, type=ExchangeType.TOPIC, durable=True
        )
        self._queue = RabbitQueue(
            topology.ingest_queue(prefix),
            queue_type=QueueType.QUORUM,
            durable=True,
            arguments={
                "x-delivery-limit": settings.ingest.delivery_limit,
                "x-dead-letter-exchange": topology.ingest_dlx(prefix),
            },
        )
        # Its own channel, so delivery tags stay dense and the prefetch bounds only it.
        self._channel = Channel(prefetch_count=settings.ingest.prefetch)
        self._queue_obj: AbstractRobustQueue | None = None
        self._consumer_tag: str | None = None
        self._dead_letters: RabbitSubscriber = broker.subscriber(
            RabbitQueue(
                topology.ingest_dlq(prefix), queue_type=QueueType.QUORUM, durable=True
            ),
            RabbitExchange(
                topology.ingest_dlx(prefix), type=ExchangeType.FANOUT, durable=True
            ),
            channel=Channel(prefetch_count=100),
            ack_policy=AckPolicy.MANUAL,
            decoder=_raw_message,
            no_reply=True,
        )
        self._dead_letters(intake.on_dead_letter)

    async def start(self) -> None:
        """Declare the ingest queue and its bindings, then consume it (broker connected)."""
        declarer = self._broker.config.declarer
        queue = await declarer.declare_queue(self._queue, channel=self._channel)
        exchange = await declarer.declare_exchange(
            self._exchange, channel=self._channel
        )
        for key in self._bindings:
            await queue.bind(exchange, routing_key=key)
        # A robust queue: after a reconnect aio-pika declares it and consumes it again
        # (with on_ingest, until its first delivery hands the channel to on_delivery).
        self._consumer_tag = await queue.consume(self._intake.on_ingest)
        self._queue_obj = queue
        metrics.watch_consumer(self._queue.name, self.consuming)

    def consuming(self) -> bool:
        """Registered as a consumer on an open channel (``dispatcher_ingest_consumer_up``)."""
        queue = self._queue_obj
        try:
            return queue is not None and not queue.channel.is_closed
        except ChannelInvalidStateError:
            return False

    async def stop_consuming(self) -> None:
        """Cancel both consumers; what was delivered stays in the batcher to be committed."""
        queue, tag = self._queue_obj, self._consumer_tag
        self._queue_obj = self._consumer_tag = None
        if queue is not None and tag is not None and not queue.channel.is_closed:
            await queue.cancel(tag)
        await self._dead_letters.stop()
        # Deliveries read before the CancelOk run their callbacks in tasks: let them run.
        for _ in range(3):
            await asyncio.sleep(0)
