"""Ack committed messages with one ``basic.ack(multiple=True)`` per channel and batch.

Delivery tags on one AMQP channel are consecutive. Batches may commit out of order (several
writers), so the acker keeps a watermark per channel and only acks the longest run of
committed tags from the last ack: a multiple-ack never covers a message that is not stored.
"""

import weakref
from collections.abc import Iterable
from typing import Protocol

import structlog

log = structlog.get_logger("dispatcher.ingest")


class AckableMessage(Protocol):
    """The part of ``aio_pika.IncomingMessage`` the acker uses."""

    @property
    def delivery_tag(self) -> int | None: ...

    @property
    def channel(self) -> object: ...

    async def ack(self, multiple: bool = False) -> None: ...


class _ChannelAcks:
    __slots__ = ("acked", "pending")

    def __init__(self) -> None:
        self.acked = 0
        self.pending: dict[int, AckableMessage] = {}


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
        touched: dict[int, tuple[object, _ChannelAcks]] = {}
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
            state.pending[tag] = message
            touched[id(channel)] = (channel, state)
        for _channel, state in touched.values():
            await self._advance(state)

    async def _advance(self, state: _ChannelAcks) -> None:
        top = state.acked
        while top + 1 in state.pending:
            top += 1
        if top == state.acked:
            return
        last = state.pending[top]
        for tag in range(state.acked + 1, top + 1):
            del state.pending[tag]
        state.acked = top
        try:
            await last.ack(multiple=True)
            self.acks_sent += 1
        except Exception as exc:  # noqa: BLE001 - the broker redelivers what it did not see acked
            log.warning(
                "dispatcher.ingest.ack_failed",
                delivery_tag=top,
                error_type=type(exc).__name__,
            )
