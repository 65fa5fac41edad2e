"""The replay runner: a durable job any replica picks up.

A runner leases one active replay at a time (``outbox/replay_progress.py: claim``), requeues its
frozen deliveries at the replay's rate, watches their outcomes, and marks the replay done
when nothing waits and nothing requeued is still on its way. Its lease is renewed every
second; a runner that dies leaves a lease that expires, and another runner (another
replica, or the same command run again) takes the replay over where it stopped. Requeued
deliveries go through the normal channel workers: breakers, retries and priority apply.

Pausing: breakers live in each replica's memory, but every transition is audited. A
replay holds the deliveries of a channel (email, SMS) while any of its providers' newest
audited transition is ``open``, and of a webhook endpoint while that endpoint's is, within
``pause_horizon`` seconds (a breaker audited open longer ago than that, with no
transition since, belongs to a replica that stopped, or has seen no traffic: the replay
resumes and its traffic lets the breaker probe). The replay reads ``paused`` meanwhile.
"""

import asyncio
import contextlib
import time
from typing import Any
from uuid import UUID

import structlog
from sqlalchemy.ext.asyncio import AsyncEngine

from dispatcher.db.engine import wrap_db_errors
from dispatcher.db.kept import KeptConnection
from dispatcher.errors import DispatcherError
from dispatcher.outbox import replay_progress, replays, requeue
from dispatcher.outbox.replays import ReplayRow
from dispatcher.resilience.backoff import Backoff
from dispatcher.telemetry import metrics

log = structlog.get_logger("dispatcher.replay")

#: Largest requeue statement: an unthrottled replay (rate 0) moves this many per tick.
BATCH = 500


class ReplayRunner:
    """Runs replays, one at a time, until stopped (or until ``only`` is final)."""

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        owner: str,
        lease_seconds: float = 15.0,
        poll_interval: float = 1.0,
        tick: float = 0.1,
        settle_interval: float = 1.0,
        pause_horizon: float = 300.0,
        only: UUID | None = None,
    ) -> None:
        self._link = KeptConnection(engine)
        self._owner = owner
        self._lease = lease_seconds
        self._poll = poll_interval
        self._tick = tick
        self._settle_interval = settle_interval
        self._pause_horizon = pause_horizon
        self._only = only
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        #: Requeue steps and checkpoints run so far; for tests.
        self.steps = 0
        self.checkpoints = 0

    async def start(self) -> None:
        self._task = asyncio.create_task(self.run(), name="replay-runner")

    async def stop(self) -> None:
        """Stop between two statements; another runner takes the replay over once its
        lease has expired."""
        self._stopping.set()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)

    async def run(self) -> None:
        """Claim and drive replays until stopped; with ``only``, until it is final."""
        try:
            await self._loop()
        finally:
            await self._link.close()

    async def _loop(self) -> None:
        backoff = Backoff(0.5, 15.0)
        while not self._stopping.is_set():
            try:
                with wrap_db_errors():
                    replay = await replay_progress.claim(
                        await self._link.driver(),
                        owner=self._owner,
                        lease_seconds=self._lease,
                        only=self._only,
                    )
                    if replay is not None:
                        await self._drive(replay)
                    elif self._only is not None and await self._final(self._only):
                        return
                backoff.reset()
            except DispatcherError as exc:
                await self._link.close(broken=True)
                log.warning("dispatcher.replay.storage", error_type=type(exc).__name__)
                await self._sleep(backoff.next_delay())
                continue
            if replay is None:
                await self._sleep(self._poll)

    async def _final(self, replay_id: UUID) -> bool:
        row = await replays.get(await self._link.driver(), replay_id)
        return row is None or row.final

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    async def _drive(self, replay: ReplayRow) -> None:
        """Requeue at the rate, settle and renew every second, until final or stopped."""
        metrics.replay_started()
        try:
            await self._run_replay(replay)
        finally:
            metrics.replay_finished()

    async def _run_replay(self, replay: ReplayRow) -> None:
        conn = await self._link.driver()
        log.info("dispatcher.replay.running", replay_id=str(replay.id))
        rate = replay.rate
        tokens, last = 0.0, time.monotonic()
        waiting: int | None = 1
        paused, next_settle = False, 0.0
        held: tuple[list[str], list[str]] = ([], [])
        while not self._stopping.is_set():
            now = time.monotonic()
            tokens = min(tokens + rate * (now - last), max(rate, 1.0))
            last = now
            n = int(tokens) if rate > 0 else BATCH
            settle = now >= next_settle or not waiting
            # Paused: every waiting item is held, so a step would only walk past them
            # all again. Try once per checkpoint (held may have changed), not per tick.
            if waiting and n and (settle or not paused):
                self.steps += 1
                step = await requeue.requeue(
                    conn,
                    replay.id,
                    owner=self._owner,
                    limit=min(n, BATCH),
                    held_channels=held[0],
                    held_endpoints=held[1],
                )
                if not step.held:
                    log.info("dispatcher.replay.released", replay_id=str(replay.id))
                    return
                metrics.replayed(step.by_channel)
                tokens -= step.requeued if rate > 0 else 0
                paused = not (step.requeued or step.skipped) and any(held)
            if settle:
                self.checkpoints += 1
                next_settle = now + self._settle_interval
                held = await self._held(conn)
                waiting = await self._checkpoint(conn, replay.id, paused=paused)
                if waiting is None:
                    return
            await self._sleep(self._tick if waiting else self._settle_interval)

    async def _checkpoint(
        self, conn: Any, replay_id: UUID, *, paused: bool
    ) -> int | None:
        """Count outcomes, finish or renew the lease; how many wait, None to let go."""
        settled = await replay_progress.settle(conn, replay_id)
        if settled is None:
            return None
        row, waiting = settled
        if not waiting and not row.pending:
            if await replay_progress.finish(conn, replay_id, owner=self._owner):
                log.info("dispatcher.replay.done", replay_id=str(replay_id))
            return None
        renewed = await replay_progress.renew(
            conn, replay_id, owner=self._owner, lease_seconds=self._lease, paused=paused
        )
        return waiting if renewed else None  # cancelled, or taken over

    async def _held(self, conn: Any) -> tuple[list[str], list[str]]:
        """Channels and webhook endpoints whose breaker the audit shows open."""
        open_ = await requeue.open_breakers(conn, horizon_seconds=self._pause_horizon)
        channels = sorted({c for c, _ in open_ if c != "webhook"})
        endpoints = sorted({p for c, p in open_ if c == "webhook"})
        return channels, endpoints
