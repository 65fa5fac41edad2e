"""The intake: each broker message parsed and routed into an ``Incoming``, handed to the
batcher without waiting (the ack comes after the commit, from the acker).

The ingest queue's hot path skips aio-pika's per-message work: the first delivery aio-pika
hands over on a channel replaces, on that channel, aio-pika's callback with ``on_delivery``,
which aiormq then calls with the bare delivery (see ``consumer.py``).
"""

import contextlib
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import aiormq
from aio_pika.abc import AbstractIncomingMessage
from aio_pika.exceptions import ChannelInvalidStateError
from aiormq.abc import DeliveredMessage

from dispatcher.events.parse import ParsedEvent, parse_event
from dispatcher.events.rejection import Rejection, RejectReason
from dispatcher.events.routing import RoutingRule, route
from dispatcher.ingest.acker import AckableMessage
from dispatcher.ingest.batcher import Batcher
from dispatcher.ingest.incoming import Accepted, Incoming, Source


class Intake:
    """Turns broker messages into ``Incoming`` items and hands them to the batcher."""

    def __init__(
        self,
        batcher: Batcher[AckableMessage],
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

    def incoming(self, message: AbstractIncomingMessage, source: Source) -> Incoming:
        """Parse and route one message; pure apart from reading it. Never raises: a
        message that is never committed would hold back the acks of all after it."""
        return self._incoming(
            message.body,
            source,
            message.routing_key,
            message.message_id,
            message.headers,
        )

    def _incoming(
        self,
        body: bytes,
        source: Source,
        routing_key: str | None,
        message_id: str | None,
        headers: Mapping[str, Any] | None,
    ) -> Incoming:
        outcome: Accepted | Rejection
        try:
            parsed = parse_event(
                body, max_bytes=self._max_body, endpoints=self._endpoints
            )
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
        except Exception as exc:  # noqa: BLE001 - a bug must not lose the message
            outcome = Rejection(
                RejectReason.INTERNAL_ERROR, f"routing error: {type(exc).__name__}"
            )
        return Incoming(
            body=body,
            outcome=outcome,
            source=source,
            routing_key=routing_key,
            message_id=message_id,
            headers=headers or {},
        )

    async def on_ingest(self, raw: AbstractIncomingMessage) -> None:
        """aio-pika's callback: only until ``on_delivery`` takes over on the channel."""
        # No await: the callback returns at once and the acker acks after the commit.
        self._batcher.put(self.incoming(raw, Source.INGEST), raw)
        with contextlib.suppress(ChannelInvalidStateError):  # closed: restored later
            channel, tag = raw.channel, raw.consumer_tag
            # Only replace a live registration: never revive a cancelled consumer.
            if isinstance(channel, aiormq.Channel) and tag in channel.consumers:
                channel.consumers[tag] = self.on_delivery

    async def on_delivery(self, raw: DeliveredMessage) -> None:
        """aiormq's callback on the ingest channel: the same as ``on_ingest``, without
        aio-pika's ``IncomingMessage`` (the acker acks through ``raw.channel``)."""
        properties = raw.header.properties
        self._batcher.put(
            self._incoming(
                raw.body,
                Source.INGEST,
                raw.routing_key,
                properties.message_id,
                properties.headers,
            ),
            raw,
        )

    async def on_dead_letter(self, raw: AbstractIncomingMessage) -> None:
        # A valid event the broker gave up on (delivery limit) is still an alert: store it
        # as an event; anything else becomes a rejected message. Nothing is dropped.
        self._batcher.put(self.incoming(raw, Source.INGEST_DLQ), raw)
