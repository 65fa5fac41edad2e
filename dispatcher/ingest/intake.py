"""The intake: each broker message parsed and routed (``reader.py``) into an ``Incoming``, handed to the
batcher without waiting (the ack comes after the commit, from the acker).

The ingest queue's hot path skips aio-pika's per-message work: the first delivery aio-pika
hands over on a channel replaces, on that channel, aio-pika's callback with ``on_delivery``,
which aiormq then calls with the bare delivery (see ``consumer.py``).
"""

import contextlib

import aiormq
from aio_pika.abc import AbstractIncomingMessage
from aio_pika.exceptions import ChannelInvalidStateError
from aiormq.abc import DeliveredMessage

from dispatcher.ingest.acker import AckableMessage
from dispatcher.ingest.batcher import Batcher
from dispatcher.ingest.incoming import Incoming, Source
from dispatcher.ingest.reader import MessageReader


class Intake:
    """Turns broker messages into ``Incoming`` items and hands them to the batcher."""

    def __init__(self, batcher: Batcher[AckableMessage], reader: MessageReader) -> None:
        self._batcher = batcher
        self._read = reader.read

    def incoming(self, message: AbstractIncomingMessage, source: Source) -> Incoming:
        """Parse and route one message (``reader.py``); never raises."""
        return self._read(
            message.body,
            source,
            message.routing_key,
            message.message_id,
            message.headers,
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
            self._read(
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
