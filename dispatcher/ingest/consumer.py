"""The FastStream subscribers: ingest queue and its dead-letter queue, persist-first.

Ack policy is MANUAL: FastStream's default for RabbitMQ rejects on any exception, which
would dead-letter (or drop) valid events while PostgreSQL is down. Here a message is acked
only after the transaction holding it commits; while PostgreSQL is away the writers retry
and the prefetch window fills, so the broker stops sending instead of us nack-looping.
"""

from collections.abc import Collection, Sequence

from aio_pika import IncomingMessage
from faststream import AckPolicy, StreamMessage
from faststream.rabbit import (
    Channel,
    ExchangeType,
    QueueType,
    RabbitBroker,
    RabbitExchange,
    RabbitQueue,
)

from dispatcher import topology
from dispatcher.events.parse import ParsedEvent, parse_event
from dispatcher.events.rejection import Rejection
from dispatcher.events.routing import RoutingRule, route
from dispatcher.ingest.batcher import Batcher
from dispatcher.ingest.incoming import Accepted, Incoming, Source
from dispatcher.settings import Settings


class IngestRouter:
    """Turns broker messages into ``Incoming`` items and hands them to the batcher."""

    def __init__(
        self,
        batcher: Batcher[IncomingMessage],
        *,
        max_body_bytes: int,
        rules: Sequence[RoutingRule],
        endpoint_filters: dict[str, Sequence[str]],
    ) -> None:
        self._batcher = batcher
        self._max_body = max_body_bytes
        self._rules = rules
        self._endpoint_filters = endpoint_filters
        self._endpoints: Collection[str] = frozenset(endpoint_filters)

    def incoming(self, message: IncomingMessage, source: Source) -> Incoming:
        """Parse and route one message; pure apart from reading it."""
        body = message.body
        parsed = parse_event(body, max_bytes=self._max_body, endpoints=self._endpoints)
        outcome: Accepted | Rejection
        if isinstance(parsed, ParsedEvent):
            event = parsed.event
            routes = route(
                event.type,
                event.severity,
                event.recipients,
                self._rules,
                self._endpoint_filters,
            )
            outcome = Accepted(parsed, routes)
        else:
            outcome = parsed
        return Incoming(
            body=body,
            outcome=outcome,
            source=source,
            routing_key=message.routing_key,
            message_id=message.message_id,
            headers=message.headers or {},
        )

    async def on_ingest(self, raw: IncomingMessage) -> None:
        await self._batcher.submit(self.incoming(raw, Source.INGEST), raw)

    async def on_dead_letter(self, raw: IncomingMessage) -> None:
        # A valid event the broker gave up on (delivery limit) is still an alert: store it
        # as an event; anything else becomes a rejected message. Nothing is dropped.
        await self._batcher.submit(self.incoming(raw, Source.INGEST_DLQ), raw)


async def _raw_message(msg: StreamMessage[IncomingMessage]) -> IncomingMessage:
    """Hand the handler the aio-pika message itself. FastStream's decoder would json-parse an
    ``application/json`` body and raise before our handler on a malformed one, leaving it
    unacked; parsing is ours alone. With ``apply_types=False`` on the broker (no dependency
    injection per message) the handler is called with exactly what this returns."""
    return msg.raw_message


def declare_ingest(
    broker: RabbitBroker, settings: Settings, router: IngestRouter
) -> None:
    """Register both subscribers (each on its own channel, so delivery tags stay dense)."""
    prefix = settings.queue_prefix
    exchange = RabbitExchange(settings.exchange, type=ExchangeType.TOPIC, durable=True)
    dlx = RabbitExchange(
        topology.ingest_dlx(prefix), type=ExchangeType.FANOUT, durable=True
    )
    queue = RabbitQueue(
        topology.ingest_queue(prefix),
        queue_type=QueueType.QUORUM,
        durable=True,
        routing_key=settings.bindings[0] if settings.bindings else "#",
        arguments={
            "x-delivery-limit": settings.ingest.delivery_limit,
            "x-dead-letter-exchange": topology.ingest_dlx(prefix),
        },
    )
    dlq = RabbitQueue(
        topology.ingest_dlq(prefix), queue_type=QueueType.QUORUM, durable=True
    )
    broker.subscriber(
        queue,
        exchange,
        channel=Channel(prefetch_count=settings.ingest.prefetch),
        ack_policy=AckPolicy.MANUAL,
        decoder=_raw_message,
        no_reply=True,
    )(router.on_ingest)
    broker.subscriber(
        dlq,
        dlx,
        channel=Channel(prefetch_count=100),
        ack_policy=AckPolicy.MANUAL,
        decoder=_raw_message,
        no_reply=True,
    )(router.on_dead_letter)


async def bind_extra_routing_keys(broker: RabbitBroker, settings: Settings) -> None:
    """FastStream binds one routing key; bind the rest of ``settings.bindings``."""
    if len(settings.bindings) <= 1:
        return
    queue = await broker.declare_queue(
        RabbitQueue(topology.ingest_queue(settings.queue_prefix), declare=False)
    )
    exchange = await broker.declare_exchange(
        RabbitExchange(settings.exchange, declare=False)
    )
    for key in settings.bindings[1:]:
        await queue.bind(exchange, routing_key=key)
