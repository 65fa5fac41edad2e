"""Group commit: messages wait in a queue; each writer takes all that are waiting (up to
``batch_max``), stores them in one transaction and hands them to ``on_commit`` (the acker).

No timer: an idle writer takes a lone message at once (low latency), a busy one finds a
full batch waiting when it comes back (high throughput). Producers ``put`` without waiting;
the queue is bounded by the broker's prefetch window, since nothing is acked before its
commit.
"""

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import structlog
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from dispatcher.db.engine import wrap_db_errors
from dispatcher.errors import StorageConflict, StorageUnavailable
from dispatcher.events.rejection import Rejection, RejectReason
from dispatcher.ingest.incoming import Incoming
from dispatcher.ingest.store import BatchResult, persist_batch

log = structlog.get_logger("dispatcher.ingest")

T = TypeVar("T")


@dataclass(slots=True)
class _Entry(Generic[T]):
    item: Incoming
    token: T
    #: Set after commit and ``on_commit`` for ``submit``; None for ``put``.
    done: asyncio.Future[None] | None = None


class _Link:
    """One writer's connection, checked out once and kept across batches (no checkout and
    pre-ping per batch). After PostgreSQL fails it is invalidated, and the next batch
    opens a new one, so a restarted server is picked up."""

    __slots__ = ("_conn", "_driver", "_engine")

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._conn: AsyncConnection | None = None
        self._driver: Any = None

    async def driver(self) -> Any:
        """The asyncpg connection (``persist_batch`` drives it directly)."""
        if self._conn is None:
            self._conn = await self._engine.connect()
            self._driver = (await self._conn.get_raw_connection()).driver_connection
        return self._driver

    async def close(self, *, broken: bool = False) -> None:
        conn, self._conn, self._driver = self._conn, None, None
        if conn is None:
            return
        with contextlib.suppress(Exception):  # already broken: the pool drops it
            if broken:
                await conn.invalidate()
            await conn.close()


class Batcher(Generic[T]):
    """Stores submitted messages in batches, retrying while PostgreSQL is away."""

    def __init__(
        self,
        engine: AsyncEngine,
        on_commit: Callable[[list[T]], Awaitable[None]],
        *,
        batch_max: int = 500,
        writers: int = 2,
        max_body_bytes: int = 262_144,
        retry_max_delay: float = 5.0,
    ) -> None:
        self._engine = engine
        self._on_commit = on_commit
        self._batch_max = batch_max
        self._writers = writers
        self._max_body = max_body_bytes
        self._retry_max_delay = retry_max_delay
        self._queue: deque[_Entry[T]] = deque()
        self._wakeup = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        #: False while PostgreSQL is unreachable; readiness probes read it.
        self.storage_ok = True
        self.totals = BatchResult()

    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._writer(), name=f"ingest-writer-{i}")
            for i in range(self._writers)
        ]

    async def stop(self, grace: float = 30.0) -> None:
        """Store and hand over everything already submitted, then stop the writers.

        After ``grace`` seconds (PostgreSQL still away) the writers are cancelled: what was
        not committed is not acked, so the broker delivers it again.
        """
        self._stopping = True
        self._wakeup.set()
        _done, pending = await asyncio.wait(self._tasks, timeout=grace)
        for task in pending:
            task.cancel()
        if pending:
            log.warning(
                "dispatcher.ingest.stop_abandoned", uncommitted=len(self._queue)
            )
            await asyncio.gather(*pending, return_exceptions=True)

    def put(self, item: Incoming, token: T) -> None:
        """Queue one message; ``on_commit`` receives its token once it is committed."""
        self._queue.append(_Entry(item, token))
        self._wakeup.set()

    async def submit(self, item: Incoming, token: T) -> None:
        """Queue one message; returns once it is committed (and handed to ``on_commit``)."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append(_Entry(item, token, done))
        self._wakeup.set()
        await asyncio.shield(done)

    async def _writer(self) -> None:
        link = _Link(self._engine)
        try:
            await self._write_batches(link)
        finally:
            await link.close()

    async def _write_batches(self, link: _Link) -> None:
        while True:
            if not self._queue:
                if self._stopping:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            batch = [
                self._queue.popleft()
                for _ in range(min(self._batch_max, len(self._queue)))
            ]
            await self._store(batch, link)
            try:
                await self._on_commit([e.token for e in batch])
            finally:
                for entry in batch:
                    if entry.done is not None and not entry.done.done():
                        entry.done.set_result(None)

    async def _store(self, batch: Sequence[_Entry[T]], link: _Link) -> None:
        try:
            await self._write_retrying([e.item for e in batch], link)
        except StorageConflict:
            # One message PostgreSQL refuses must not fail the others: store them one by one.
            for entry in batch:
                await self._store_alone(entry.item, link)

    async def _store_alone(self, item: Incoming, link: _Link) -> None:
        try:
            await self._write_retrying([item], link)
        except StorageConflict:
            log.error("dispatcher.ingest.storage_rejected", message_id=item.message_id)
            item.outcome = Rejection(
                RejectReason.STORAGE_REJECTED,
                "PostgreSQL refused the event although it validated",
            )
            try:
                await self._write_retrying([item], link)
            except StorageConflict:
                item.headers = {}  # the last thing that could be refused; the body is bytea
                await self._write_retrying([item], link)

    async def _write_retrying(self, items: list[Incoming], link: _Link) -> None:
        delay = 0.1
        while True:
            try:
                with wrap_db_errors():
                    conn = await link.driver()
                    async with conn.transaction():
                        result = await persist_batch(
                            conn, items, max_body_bytes=self._max_body
                        )
            except StorageConflict:
                raise
            except Exception as exc:  # noqa: BLE001 - the batch is kept and retried, never dropped
                await link.close(broken=True)
                if not isinstance(exc, StorageUnavailable):
                    # Not a translated driver error: a driver state or a bug. Retrying is
                    # the only way not to lose the batch; say so loudly (type only: PII).
                    log.error(
                        "dispatcher.ingest.write_failed", error_type=type(exc).__name__
                    )
                if self.storage_ok:
                    log.warning(
                        "dispatcher.ingest.storage_unavailable",
                        error=str(exc)
                        if isinstance(exc, StorageUnavailable)
                        else type(exc).__name__,
                        waiting=len(items) + len(self._queue),
                    )
                    self.storage_ok = False
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._retry_max_delay)
                continue
            if not self.storage_ok:
                self.storage_ok = True
                log.info("dispatcher.ingest.storage_recovered")
            self._account(result)
            return

    def _account(self, result: BatchResult) -> None:
        t = self.totals
        t.stored += result.stored
        t.duplicates += result.duplicates
        t.conflicts += result.conflicts
        t.rejected += result.rejected
        t.deliveries += result.deliveries
        for event_id in result.unrouted:
            log.warning("dispatcher.ingest.event_unrouted", event_id=str(event_id))
