"""Composition root: the only place where settings become objects."""

import asyncio
import signal
from collections.abc import Sequence

import structlog
from aio_pika.abc import AbstractIncomingMessage
from faststream.rabbit import RabbitBroker
from sqlalchemy.ext.asyncio import AsyncEngine

from dispatcher.db.engine import create_engine
from dispatcher.ingest.acker import Acker
from dispatcher.ingest.batcher import Batcher
from dispatcher.ingest.consumer import IngestConsumer, IngestRouter
from dispatcher.settings import Settings

log = structlog.get_logger("dispatcher")


def build_engine(
    settings: Settings, application_name: str = "dispatcher"
) -> AsyncEngine:
    return create_engine(
        settings.database_url.get_secret_value(),
        pool_size=settings.database_pool_size,
        application_name=application_name,
    )


class IngestService:
    """The ingest consumer, its batch writers and its acker, started and stopped together."""

    def __init__(self, settings: Settings, engine: AsyncEngine) -> None:
        self.settings = settings
        self.acker = Acker()
        self.batcher: Batcher[AbstractIncomingMessage] = Batcher(
            engine,
            self.acker.committed,
            batch_max=settings.ingest.batch_max,
            writers=settings.ingest.writers,
            max_body_bytes=settings.ingest.max_body_bytes,
            retry_max_delay=settings.ingest.storage_retry_max_delay,
        )
        endpoints = settings.channels.webhook.endpoints
        self.router = IngestRouter(
            self.batcher,
            max_body_bytes=settings.ingest.max_body_bytes,
            rules=settings.routing,
            endpoint_filters={name: ep.event_types for name, ep in endpoints.items()},
        )
        self.broker = RabbitBroker(
            settings.amqp_url.get_secret_value(),
            logger=None,  # FastStream logs every message at INFO; we log ids ourselves
            graceful_timeout=30.0,
            app_id="dispatcher",
            apply_types=False,  # handlers take the raw message: no per-message injection
        )
        self.consumer = IngestConsumer(self.broker, settings, self.router)

    async def start(self) -> None:
        await self.batcher.start()
        await self.broker.start()
        await self.consumer.start()
        log.info("dispatcher.ingest.started", queue_prefix=self.settings.queue_prefix)

    async def stop(self) -> None:
        """Stop consuming, let in-flight messages commit and be acked, then close."""
        await self.consumer.stop_consuming()
        await self.batcher.stop()
        await self.broker.stop()
        log.info(
            "dispatcher.ingest.stopped",
            stored=self.batcher.totals.stored,
            rejected=self.batcher.totals.rejected,
        )


async def run_until_signalled(
    services: Sequence[IngestService], engine: AsyncEngine
) -> None:
    """Start the services, wait for SIGTERM or SIGINT, stop them gracefully."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        for service in services:
            await service.start()
        log.info("dispatcher.serving")
        await stop.wait()
        log.info("dispatcher.stopping")
    finally:
        for service in reversed(services):
            await service.stop()
        await engine.dispose()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
