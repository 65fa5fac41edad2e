"""Ack committed messages with one ``basic.ack(multiple=True)`` per channel and batch.

Delivery tags on one AMQP channel are consecutive. Batches may commit out of order (several
writers), so the acker keeps a watermark per channel and only acks the longest run of
committed tags from the last ack: a multiple-ack never covers a message that is not stored.
"""

import weakref
from collections.abc import Iterable
from typing import Any, Protocol

import structlog

log = structlog.get_logger("dispatcher.ingest")


class AckChannel(Protocol):
    """The part of ``aiormq.Channel`` the acker uses."""

    async def basic_ack(self, delivery_tag: int, multiple: bool = False) -> None: ...


class AckableMessage(Protocol):
    """A consumed message: ``aio_pika.IncomingMessage`` or ``aiormq``'s
    ``DeliveredMessage`` (the ingest queue's hot path), whose ``channel`` is the same
    ``aiormq`` channel either way."""

    @property
    def delivery_tag(self) -> int | None: ...

    @property
    def channel(self) -> Any: ...


class _ChannelAcks:
    __slots__ = ("acked", "pending")

    def __init__(self) -> None:
        self.acked = 0
        self.pending: set[int] = set()


class Acker:
    """Per-channel watermark of committed delivery tags."""

    def __init__(self) -> None:
        # Keyed by the underlying channel: after a reconnect tags restart at 1 on a new one.
        self._channels: weakref.WeakKeyDictionary[object, _ChannelAcks] = (
            weakref.WeakKeyDictionary()
        )
        self.acks_sent = 0

    async def committed(self, messages: Iterable[AckableMessage]) -> None:
        """Record messages as stored and ack every channel's newly contiguous run."""
        touched: dict[int, tuple[AckChannel, _ChannelAcks]] = {}
        for message in messages:
            tag = message.delivery_tag
            if tag is None:
                continue
            try:
                channel = message.channel
            except Exception as exc:  # noqa: BLE001 - closed channel: the broker redelivers, ingest de-duplicates
                log.info(
                    "dispatcher.ingest.ack_skipped",
                    delivery_tag=tag,
                    error_type=type(exc).__name__,
                )
                continue
            state = self._channels.get(channel)
            if state is None:
                state = self._channels[channel] = _ChannelAcks()
            state.pending.add(tag)
            touched[id(channel)] = (channel, state)
        for channel, state in touched.values():
            await self._advance(channel, state)

    async def _advance(self, channel: AckChannel, state: _ChannelAcks) -> None:
        top = state.acked
        while top + 1 in state.pending:
            top += 1
        if top == state.acked:
            return
        for tag in range(state.acked + 1, top + 1):
            state.pending.discard(tag)
        state.acked = top
        try:
            await channel.basic_ack(top, multiple=True)
            self.acks_sent += 1
        except Exception as exc:  # noqa: BLE001 - the broker redelivers what it did not see acked
            log.warning(
                "dispatcher.ingest.ack_failed",
                delivery_tag=top,
                error_type=type(exc).__name__,
            )
