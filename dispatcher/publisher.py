"""Publish events to the exchange with publisher confirms.

A publish whose confirm timed out may still have been enqueued (FIELD-NOTES finding 4), so
it is retried with the very same bytes and ``event_id``: ingest de-duplicates on it.
"""

import asyncio
import time
from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import Any, Self

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractRobustConnection
from aio_pika.exceptions import (
    AMQPError,
    DeliveryError,
)
from aio_pika.exceptions import (
    PublishError as PikaPublishError,
)
from pamqp.commands import Basic

from dispatcher.errors import PublishError
from dispatcher.resilience.backoff import Backoff
from dispatcher.telemetry import tracing
from dispatcher.telemetry.metrics import PUBLISHED_AT_HEADER


class Publisher:
    """An AMQP connection with a confirming channel, opened as an async context manager."""

    def __init__(
        self,
        amqp_url: str,
        exchange: str,
        *,
        confirm_timeout: float = 5.0,
        attempts: int = 5,
        declare_exchange: bool = True,
    ) -> None:
        self._url = amqp_url
        self._exchange_name = exchange
        self._confirm_timeout = confirm_timeout
        self._attempts = attempts
        self._declare = declare_exchange
        self._connection: AbstractRobustConnection | None = None
        self._channel: AbstractChannel | None = None
        self._exchange: AbstractExchange | None = None

    async def __aenter__(self) -> Self:
        try:
            self._connection = await aio_pika.connect_robust(self._url, timeout=10)
            self._channel = await self._connection.channel(
                publisher_confirms=True, on_return_raises=True
            )
            if self._declare:
                self._exchange = await self._channel.declare_exchange(
                    self._exchange_name, aio_pika.ExchangeType.TOPIC, durable=True
                )
            else:
                self._exchange = await self._channel.get_exchange(
                    self._exchange_name, ensure=False
                )
        except (TimeoutError, AMQPError, OSError) as exc:
            await self.aclose()
            raise PublishError(
                f"cannot connect to RabbitMQ: {type(exc).__name__}"
            ) from exc
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._connection is not None:
            await self._connection.close()
            self._connection = None

    async def publish(
        self,
        body: bytes,
        routing_key: str,
        *,
        message_id: str | None = None,
        headers: Mapping[str, Any] | None = None,
    ) -> None:
        """Publish one message persistently and wait for the broker's confirm.

        Raises:
            PublishError: unroutable (no queue bound), or not confirmed after every attempt.
        """
        if self._exchange is None:
            raise PublishError("the publisher is not open")
        sent: dict[str, Any] = dict(headers or {})
        sent.setdefault(PUBLISHED_AT_HEADER, f"{time.time():.6f}")
        # The producer span covers every retry; its context travels in the headers.
        with tracing.producer(self._exchange_name, routing_key, message_id, sent):
            await self._publish_confirmed(
                aio_pika.Message(
                    body,
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                    content_type="application/json",
                    message_id=message_id,
                    headers=sent,
                ),
                routing_key,
            )

    async def _publish_confirmed(
        self, message: aio_pika.Message, routing_key: str
    ) -> None:
        if self._exchange is None:
            raise PublishError("the publisher is not open")
        backoff = Backoff(0.2, 5.0)
        last: BaseException | None = None
        for attempt in range(1, self._attempts + 1):
            try:
                confirm = await self._exchange.publish(
                    message, routing_key, mandatory=True, timeout=self._confirm_timeout
                )
            except PikaPublishError as exc:  # returned: nothing is bound for this key
                raise PublishError(
                    f"unroutable: no queue is bound for routing key {routing_key!r}"
                ) from exc
            except (TimeoutError, DeliveryError, AMQPError, OSError) as exc:
                last = exc
            else:
                if isinstance(confirm, Basic.Ack):
                    return
                last = PublishError(f"broker answered {type(confirm).__name__}")
            if attempt < self._attempts:
                await backoff.wait()
        raise PublishError(
            f"not confirmed after {self._attempts} attempts: {type(last).__name__}"
        ) from last

    async def publish_many(
        self, messages: Iterable[tuple[bytes, str, str | None]], *, window: int = 256
    ) -> int:
        """Publish ``(body, routing_key, message_id)`` items with up to ``window`` confirms in flight."""
        gate = asyncio.Semaphore(window)
        count = 0

        async def one(body: bytes, key: str, message_id: str | None) -> None:
            nonlocal count
            try:
                await self.publish(body, key, message_id=message_id)
                count += 1
            finally:
                gate.release()

        async with asyncio.TaskGroup() as group:
            for body, key, message_id in messages:
                await gate.acquire()
                group.create_task(one(body, key, message_id))
        return count
