"""Composition root: the only place where settings become objects."""

import asyncio
import gc
import signal
from collections.abc import Collection, Sequence
from typing import Protocol
from uuid import UUID

import structlog
from faststream.rabbit import RabbitBroker
from faststream.rabbit.opentelemetry import RabbitTelemetryMiddleware
from sqlalchemy.ext.asyncio import AsyncEngine

from dispatcher import topology
from dispatcher.channels import email, sms
from dispatcher.channels.base import Channel
from dispatcher.channels.email_config import EmailChannelConfig
from dispatcher.channels.sms_config import SmsChannelConfig
from dispatcher.channels.webhook import WebhookChannel
from dispatcher.channels.webhook_config import WebhookChannelConfig
from dispatcher.db.engine import create_engine
from dispatcher.delivery.breaker_audit import BreakerAudit
from dispatcher.delivery.mirror import DeadLetterMirror
from dispatcher.delivery.providers import (
    Candidate,
    EndpointProviders,
    FailoverProviders,
    Providers,
)
from dispatcher.delivery.recorder import Recorder
from dispatcher.delivery.replayer import ReplayRunner
from dispatcher.delivery.replica import replica_id
from dispatcher.delivery.service import DeliveryService
from dispatcher.errors import ConfigError
from dispatcher.events.kinds import ChannelKind
from dispatcher.health import Component, ComponentProbe
from dispatcher.ingest.acker import AckableMessage, Acker
from dispatcher.ingest.batcher import Batcher
from dispatcher.ingest.consumer import IngestConsumer
from dispatcher.ingest.intake import Intake
from dispatcher.ingest.reader import MessageReader
from dispatcher.outbox.handoff import Handoff
from dispatcher.resilience.breaker import CircuitBreaker, TransitionHook
from dispatcher.resilience.delivery_policy import ChannelDelivery
from dispatcher.settings import Settings
from dispatcher.telemetry import metrics, tracing

log = structlog.get_logger("dispatcher")


def build_engine(
    settings: Settings, application_name: str = "dispatcher"
) -> AsyncEngine:
    engine = create_engine(
        settings.database_url.get_secret_value(),
        pool_size=settings.database_pool_size,
        application_name=application_name,
    )
    metrics.watch_pool(application_name, engine.pool)
    return engine


class IngestService:
    """The ingest consumer, its batch writers and its acker, started and stopped together."""

    def __init__(
        self, settings: Settings, engine: AsyncEngine, *, handoff: Handoff | None = None
    ) -> None:
        """With ``handoff`` (this replica's ``DeliveryService.fast_path``) and
        ``ingest.fast_path`` on, deliveries its workers have slots for are leased to them
        as they are inserted (docs/delivery.md, "The fast path")."""
        self.settings = settings
        self.acker = Acker()
        self.batcher: Batcher[AckableMessage] = Batcher(
            engine,
            self.acker.committed,
            batch_max=settings.ingest.batch_max,
            writers=settings.ingest.writers,
            max_body_bytes=settings.ingest.max_body_bytes,
            retry_max_delay=settings.ingest.storage_retry_max_delay,
            recipient_key=recipient_key(settings),
            queue=topology.ingest_queue(settings.queue_prefix),
            handoff=handoff if settings.ingest.fast_path else None,
        )
        self.intake = Intake(self.batcher, build_reader(settings))
        self.broker = RabbitBroker(
            settings.amqp_url.get_secret_value(),
            logger=None,  # FastStream logs every message at INFO; we log ids ourselves
            graceful_timeout=30.0,
            app_id="dispatcher",
            apply_types=False,  # handlers take the raw message: no per-message injection
            # FastStream's own consumer spans where it runs the handler (the ingest DLQ).
            middlewares=[RabbitTelemetryMiddleware(tracer_provider=tracer_provider)]
            if (tracer_provider := tracing.provider()) is not None
            else [],
        )
        self.consumer = IngestConsumer(self.broker, settings, self.intake)

    async def start(self) -> None:
        await self.batcher.start()
        await self.broker.start()
        await self.consumer.start()
        log.info("dispatcher.ingest.started", queue_prefix=self.settings.queue_prefix)

    def probe(self) -> Component:
        """Readiness: consuming the ingest queue on an open channel."""
        if self.consumer.consuming():
            return Component("ingest", ok=True, detail="consuming the ingest queue")
        return Component(
            "ingest",
            ok=False,
            detail="not consuming the ingest queue (consumer stopped)",
        )

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


def build_reader(settings: Settings) -> MessageReader:
    """How ingest parses and routes a body; ``rejected replay`` reads with it too."""
    endpoints = settings.channels.webhook.endpoints
    return MessageReader(
        max_body_bytes=settings.ingest.max_body_bytes,
        rules=settings.routing,
        endpoint_filters={name: ep.event_types for name, ep in endpoints.items()},
    )


def worker_probes(delivery: DeliveryService) -> list[ComponentProbe]:
    """Readiness of each channel's worker loop (``worker.email``, ...)."""

    def probe(kind: ChannelKind) -> ComponentProbe:
        worker = delivery.workers[kind]

        def check() -> Component:
            name = f"worker.{kind.value}"
            if worker.alive:
                return Component(name, ok=True, detail="claim loop running")
            return Component(name, ok=False, detail="claim loop not running")

        return check

    return [probe(kind) for kind in delivery.workers]


def build_delivery(
    settings: Settings,
    engine: AsyncEngine,
    *,
    only: Collection[ChannelKind] | None = None,
    owner: str | None = None,
    mirror: bool = True,
) -> DeliveryService:
    """The channel workers of this replica, for every enabled channel (or ``only`` these)."""
    owner = owner or replica_id()
    dead_letters = (
        DeadLetterMirror(
            settings.amqp_url.get_secret_value(), settings.queue_prefix, engine
        )
        if mirror
        else None
    )
    recorder = Recorder(
        engine, on_dead=dead_letters.add if dead_letters is not None else None
    )
    channels: dict[ChannelKind, tuple[Providers, ChannelDelivery]] = {}
    for kind, config in channel_configs(settings).items():
        if only is not None and kind not in only:
            continue
        hook = BreakerAudit(recorder, owner, kind)
        channels[kind] = (build_providers(kind, config, hook), config)
    if not channels:
        raise ConfigError(
            "no channel is enabled and configured: set channels.email.providers, "
            "channels.sms.providers or channels.webhook.endpoints"
        )
    return DeliveryService(
        engine,
        settings.database_url.get_secret_value(),
        channels,
        recorder=recorder,
        owner=owner,
        mirror=dead_letters,
        replayer=build_replayer(settings, engine, owner=owner),
    )


def build_replayer(
    settings: Settings,
    engine: AsyncEngine,
    *,
    owner: str,
    only: UUID | None = None,
    lease_seconds: float = 15.0,
) -> ReplayRunner:
    """The replay runner; it pauses a channel for as long as its breakers stay open."""
    horizon = max(
        (c.breaker.open_seconds for c in channel_configs(settings).values()),
        default=30.0,
    )
    return ReplayRunner(
        engine,
        owner=owner,
        only=only,
        pause_horizon=horizon,
        lease_seconds=lease_seconds,
    )


def recipient_key(settings: Settings) -> bytes | None:
    """The key of the recipient search index, when one is configured."""
    key = settings.api.recipient_hash_key
    return None if key is None else key.get_secret_value().encode()


def channel_configs(settings: Settings) -> dict[ChannelKind, ChannelDelivery]:
    """The channels that are enabled and have somewhere to send."""
    channels = settings.channels
    configs: dict[ChannelKind, ChannelDelivery] = {}
    if channels.email.enabled and channels.email.providers:
        configs[ChannelKind.EMAIL] = channels.email
    if channels.sms.enabled and channels.sms.providers:
        configs[ChannelKind.SMS] = channels.sms
    if channels.webhook.enabled and channels.webhook.endpoints:
        configs[ChannelKind.WEBHOOK] = channels.webhook
    return configs


def build_providers(
    kind: ChannelKind, config: ChannelDelivery, hook: TransitionHook
) -> Providers:
    """One channel's adapters, each behind its own circuit breaker."""

    def breaker(name: str) -> CircuitBreaker:
        return CircuitBreaker(name, config.breaker, on_transition=[hook])

    adapters: Sequence[Channel]
    if isinstance(config, WebhookChannelConfig):
        return EndpointProviders(WebhookChannel(config), breaker)
    if isinstance(config, EmailChannelConfig):
        adapters = email.build_channels(config)
    elif isinstance(config, SmsChannelConfig):
        adapters = sms.build_channels(config)
    else:
        raise ConfigError(f"channel {kind.value} has no adapter")
    if config.lease_seconds <= config.try_seconds() * len(adapters):
        # Failover tries every provider within one attempt, each with its own deadline.
        raise ConfigError(
            f"channels.{kind.value}.lease_seconds must be longer than"
            f" ({config.try_settings}) x {len(adapters)} providers"
        )
    return FailoverProviders([Candidate(a, breaker(a.name)) for a in adapters])


#: The cyclic collector's thresholds for a running service (CPython's are 700, 10, 10).
#: Each message allocates hundreds of short-lived containers (frames of coroutines, rows,
#: dicts), so at 700 the youngest generation was collected thousands of times a second;
#: nearly everything it found was already freed by reference counting. At 10,000 a
#: 6,000-event drain used 7 % less CPU per event and drained 7-10 % faster, at the same
#: peak RSS and latency (docs/benchmarks.md, "The collector's thresholds").
GC_THRESHOLDS = (10_000, 20, 100)


def settle_heap() -> None:
    """Exempt what start-up built from the cyclic garbage collector, once, and collect
    the young generation less often (``GC_THRESHOLDS``).

    Imports, settings, clients and pools are long-lived; every full (generation 2)
    collection walked all of them, stopping the event loop for ~100 ms at random moments,
    which was most of the p99 delivery latency. Frozen objects are never collected, so
    start-up's own garbage is collected first.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


class Service(Protocol):
    """Something ``run_until_signalled`` starts and stops: ingest, delivery, the API."""

    async def start(self) -> None: ...
    async def stop(self) -> None: ...


async def run_until_signalled(
    services: Sequence[Service], engine: AsyncEngine | None
) -> None:
    """Start the services, wait for SIGTERM or SIGINT, stop them gracefully."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        for service in services:
            await service.start()
        settle_heap()
        log.info("dispatcher.serving")
        await stop.wait()
        log.info("dispatcher.stopping")
    finally:
        for service in reversed(services):
            await service.stop()
        if engine is not None:
            await engine.dispose()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
