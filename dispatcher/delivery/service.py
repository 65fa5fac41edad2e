"""The delivery side of a replica: one worker per channel, one recorder, one waker.

Started and stopped together, like ``IngestService``. Each channel's providers are built by
the composition root (``app.py``) from configuration and handed in, so this module knows
nothing about SMTP, Twilio or HTTP.
"""

import asyncio
from collections.abc import Mapping

import structlog
from sqlalchemy.ext.asyncio import AsyncEngine

from dispatcher.delivery.fastpath import FastPath
from dispatcher.delivery.mirror import DeadLetterMirror
from dispatcher.delivery.providers import Providers
from dispatcher.delivery.recorder import Recorder
from dispatcher.delivery.replayer import ReplayRunner
from dispatcher.delivery.worker import ChannelWorker
from dispatcher.events.kinds import ChannelKind
from dispatcher.outbox.waker import Waker
from dispatcher.resilience.delivery_policy import ChannelDelivery

log = structlog.get_logger("dispatcher.delivery")


class DeliveryService:
    """Channel workers, their recorder, the LISTEN waker and the dead-letter mirror."""

    def __init__(
        self,
        engine: AsyncEngine,
        database_url: str,
        channels: Mapping[ChannelKind, tuple[Providers, ChannelDelivery]],
        *,
        recorder: Recorder,
        owner: str,
        mirror: DeadLetterMirror | None = None,
        replayer: ReplayRunner | None = None,
    ) -> None:
        self.owner = owner
        #: Runs dead-letter replays created by ``dispatcher dlq replay`` or the API.
        self.replayer = replayer
        self.recorder = recorder
        self._mirror = mirror
        self._providers = {kind: providers for kind, (providers, _) in channels.items()}
        wakeups = {kind.value: asyncio.Event() for kind in channels}
        self.waker = Waker(database_url, wakeups)
        self.workers = {
            kind: ChannelWorker(
                kind,
                engine,
                providers,
                recorder,
                settings,
                wakeup=wakeups[kind.value],
                owner=owner,
            )
            for kind, (providers, settings) in channels.items()
        }
        #: Ingest's hand-off to these workers (``IngestService(handoff=...)``).
        self.fast_path = FastPath(self.workers, owner)

    async def start(self) -> None:
        if self._mirror is not None:
            await self._mirror.start()
        await self.recorder.start()
        await self.waker.start()
        for worker in self.workers.values():
            await worker.start()
        if self.replayer is not None:
            await self.replayer.start()
        log.info(
            "dispatcher.delivery.started",
            owner=self.owner,
            channels=[k.value for k in self.workers],
        )

    async def stop(self) -> None:
        """Stop claiming, let in-flight attempts finish, write their outcomes, close."""
        if self.replayer is not None:
            await self.replayer.stop()
        await asyncio.gather(*(w.stop() for w in self.workers.values()))
        await self.waker.stop()
        await self.recorder.stop()
        for providers in self._providers.values():
            await providers.aclose()
        if self._mirror is not None:
            await self._mirror.stop()
        log.info("dispatcher.delivery.stopped", owner=self.owner)
