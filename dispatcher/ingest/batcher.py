"""Group commit: messages wait in a queue; each writer takes all that are waiting (up to
``batch_max``), stores them in one transaction and hands them to ``on_commit`` (the acker).

No timer: an idle writer takes a lone message at once (low latency), a busy one finds a
full batch waiting when it comes back (high throughput). Producers ``put`` without waiting;
the queues are bounded by the broker's prefetch window, since nothing is acked before its
commit.

Each writer has its own queue, and a valid event goes to the writer its ``event_id`` hashes
to: messages with the same id are stored in the order they arrived, so a conflicting
republish can never overtake the original into ``events`` (two writers racing for the same
id could commit either first). Rejected messages write no event, so they go to the writer
with the shortest queue.

A writer must never die: the messages it holds would stay unacked, and never redelivered,
for as long as the broker connection lives, and the multiple-ack watermark would hold back
every later message with them. So a write is retried while PostgreSQL is away, a batch
that cannot be written is split and each message that cannot be written is stored as a
rejected message, and a writer whose loop fails anyway says so loudly and starts again.
"""

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Generic, TypeVar

import structlog
from sqlalchemy.ext.asyncio import AsyncEngine

from dispatcher.db.connection import CONNECT_TIMEOUT
from dispatcher.db.engine import wrap_db_errors
from dispatcher.db.kept import KeptConnection
from dispatcher.errors import StorageConflict, StorageFault, StorageUnavailable
from dispatcher.events.rejection import Rejection, RejectReason
from dispatcher.ingest.incoming import Incoming
from dispatcher.ingest.store import BatchResult, persist_batch
from dispatcher.outbox.handoff import Handoff
from dispatcher.resilience.backoff import Backoff
from dispatcher.telemetry import metrics, tracing

log = structlog.get_logger("dispatcher.ingest")

T = TypeVar("T")

#: Session settings of a writer's connection. A lock held by a session that died half-open
#: inside its transaction (until PostgreSQL ends it, see db/connection.py) fails the write
#: after this long instead of holding it; the write is retried like an outage.
_WRITER_SESSION = {"lock_timeout": "5s"}

#: Untranslated failures of one write, each while PostgreSQL answered a probe, after which
#: the data (a bug on it) is blamed rather than the server, and the write is refused.
_SUSPECT_AFTER = 3


class _Refused(Exception):
    """This write cannot succeed as it is: PostgreSQL refused the data, or writing it
    failed the same unexpected way while PostgreSQL answered."""

    def __init__(self, message: str, error_type: str) -> None:
        super().__init__(message)
        self.message = message
        self.error_type = error_type


@dataclass(slots=True)
class _Entry(Generic[T]):
    item: Incoming
    token: T
    #: Set after commit and ``on_commit`` for ``submit``; None for ``put``.
    done: asyncio.Future[None] | None = None


def _items(batch: Sequence[_Entry[T]]) -> list[Incoming]:
    return [e.item for e in batch]


class _Lane(Generic[T]):
    """One writer's queue."""

    __slots__ = ("queue", "wakeup")

    def __init__(self) -> None:
        self.queue: deque[_Entry[T]] = deque()
        self.wakeup = asyncio.Event()


class Batcher(Generic[T]):
    """Stores submitted messages in batches, retrying while PostgreSQL is away."""

    def __init__(
        self,
        engine: AsyncEngine,
        on_commit: Callable[[list[T]], Awaitable[None]],
        *,
        batch_max: int = 500,
        writers: int = 1,
        max_body_bytes: int = 262_144,
        retry_max_delay: float = 5.0,
        recipient_key: bytes | None = None,
        queue: str = "ingest",
        handoff: Handoff | None = None,
    ) -> None:
        self._engine = engine
        self._on_commit = on_commit
        self._batch_max = batch_max
        self._max_body = max_body_bytes
        self._retry_max_delay = retry_max_delay
        self._recipient_key = recipient_key
        #: This replica's channel workers, for the fast path (None: every delivery is
        #: inserted pending, for the claims).
        self._handoff = handoff
        #: The queue its messages come from, as ingest spans name it.
        self.queue = queue
        self._lanes: list[_Lane[T]] = [_Lane() for _ in range(writers)]
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        #: False while PostgreSQL is unreachable; readiness probes read it.
        self.storage_ok = True
        self.totals = BatchResult()

    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(
                self._writer(f"ingest-writer-{i}", lane), name=f"ingest-writer-{i}"
            )
            for i, lane in enumerate(self._lanes)
        ]

    async def stop(self, grace: float = 30.0) -> None:
        """Store and hand over everything already submitted, then stop the writers.

        After ``grace`` seconds (PostgreSQL still away) the writers are cancelled: what was
        not committed is not acked, so the broker delivers it again.
        """
        self._stopping = True
        for lane in self._lanes:
            lane.wakeup.set()
        _done, pending = await asyncio.wait(self._tasks, timeout=grace)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
            log.warning("dispatcher.ingest.stop_abandoned", uncommitted=self._waiting())

    def put(self, item: Incoming, token: T) -> None:
        """Queue one message; ``on_commit`` receives its token once it is committed."""
        self._enqueue(_Entry(item, token))

    async def submit(self, item: Incoming, token: T) -> None:
        """Queue one message; returns once it is committed (and handed to ``on_commit``)."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._enqueue(_Entry(item, token, done))
        await asyncio.shield(done)

    def _enqueue(self, entry: _Entry[T]) -> None:
        outcome = entry.item.outcome
        if isinstance(outcome, Rejection):
            lane = min(self._lanes, key=lambda lane: len(lane.queue))
        else:
            event_id = outcome.parsed.event.event_id
            lane = self._lanes[event_id.int % len(self._lanes)]
        lane.queue.append(entry)
        lane.wakeup.set()

    def _waiting(self) -> int:
        return sum(len(lane.queue) for lane in self._lanes)

    async def _writer(self, name: str, lane: _Lane[T]) -> None:
        link = KeptConnection(self._engine, settings=_WRITER_SESSION)
        backoff = Backoff(min(0.1, self._retry_max_delay), self._retry_max_delay)
        try:
            while True:
                try:
                    await self._write_batches(lane, link)
                except Exception as exc:  # noqa: BLE001 - a dead writer strands its messages
                    # A bug: the batch went back to the queue uncommitted (see below).
                    delay = backoff.next_delay()
                    log.critical(
                        "dispatcher.ingest.writer_crashed",
                        writer=name,
                        error_type=type(exc).__name__,
                        restart_in=round(delay, 3),
                    )
                    await link.close(broken=True)
                    await asyncio.sleep(delay)
                else:
                    return
        finally:
            await link.close()

    async def _write_batches(self, lane: _Lane[T], link: KeptConnection) -> None:
        queue = lane.queue
        while True:
            if not queue:
                if self._stopping:
                    return
                lane.wakeup.clear()
                await lane.wakeup.wait()
                continue
            batch = [queue.popleft() for _ in range(min(self._batch_max, len(queue)))]
            try:
                with tracing.ingest_batch(partial(_items, batch), self.queue):
                    await self._store(batch, link)
            except BaseException:
                # Cancelled at stop, or a bug: nothing of it is acked; put it back, in
                # order, for the restarted writer (at worst a message stored alone is
                # stored again).
                queue.extendleft(reversed(batch))
                lane.wakeup.set()
                raise
            await self._hand_over(batch)

    async def _hand_over(self, batch: Sequence[_Entry[T]]) -> None:
        try:
            await self._on_commit([e.token for e in batch])
        except Exception as exc:  # noqa: BLE001 - committed: the writer must go on
            # Stored but maybe not acked: the broker redelivers those after a reconnect
            # or restart, and ingest de-duplicates them.
            log.critical(
                "dispatcher.ingest.commit_handover_failed",
                messages=len(batch),
                error_type=type(exc).__name__,
            )
        finally:
            for entry in batch:
                if entry.done is not None and not entry.done.done():
                    entry.done.set_result(None)

    async def _store(self, batch: Sequence[_Entry[T]], link: KeptConnection) -> None:
        try:
            await self._write_retrying([e.item for e in batch], link)
        except _Refused:
            # One message that cannot be written must not fail the others: one by one.
            for entry in batch:
                await self._store_alone(entry.item, link)

    async def _store_alone(self, item: Incoming, link: KeptConnection) -> None:
        """Store one message as it is, else as a rejected message, else as a rejected
        message reduced to its body. Returns only once it is committed."""
        try:
            await self._write_retrying([item], link)
        except _Refused as refused:
            log.error(
                "dispatcher.ingest.storage_rejected",
                message_id=item.message_id,
                error_type=refused.error_type,
            )
            # A rejection already keeps its own reason, and was just refused as one.
            if not isinstance(item.outcome, Rejection):
                item.outcome = Rejection(RejectReason.STORAGE_REJECTED, refused.message)
                with contextlib.suppress(_Refused):
                    await self._write_retrying([item], link)
                    return
        else:
            return
        # What is left could only be refused by a broken schema or a bug in this code:
        # not committed, so never acked; keep trying, loudly, like an outage.
        item.headers, item.routing_key, item.message_id = {}, None, None
        while True:
            try:
                await self._write_retrying([item], link)
            except _Refused as refused:
                log.critical(
                    "dispatcher.ingest.unstorable",
                    error_type=refused.error_type,
                    retry_in=self._retry_max_delay,
                )
                await asyncio.sleep(self._retry_max_delay)
            else:
                return

    async def _write_retrying(
        self, items: list[Incoming], link: KeptConnection
    ) -> None:
        """Write and commit, waiting out PostgreSQL outages (backing off, forever).

        Raises:
            _Refused: PostgreSQL refused the data, or the write failed in an untranslated
                way ``_SUSPECT_AFTER`` times while PostgreSQL answered a probe each time.
        """
        backoff = Backoff(min(0.1, self._retry_max_delay), self._retry_max_delay)
        suspect = 0
        while True:
            try:
                result = await self._commit(items, link)
            except StorageConflict as exc:
                raise _Refused(
                    "PostgreSQL refused the event although it validated",
                    type(exc).__name__,
                ) from None
            except Exception as exc:  # noqa: BLE001 - the batch is kept and retried, never dropped
                await link.close(broken=True)
                # A fault (the server answered: a schema or code bug) is no outage:
                # waiting would hold this message, and every ack after it, forever.
                unavailable = isinstance(exc, StorageUnavailable) and not isinstance(
                    exc, StorageFault
                )
                if not unavailable:
                    # A fault, a driver state or a bug. Type only (PII).
                    log.error(
                        "dispatcher.ingest.write_failed",
                        error_type=type(exc).__name__,
                        error=str(exc) if isinstance(exc, StorageFault) else None,
                    )
                    if await self._answers(link):
                        suspect += 1
                        if suspect >= _SUSPECT_AFTER:
                            raise _Refused(
                                f"storing it failed ({type(exc).__name__})",
                                type(exc).__name__,
                            ) from None
                    else:
                        unavailable = True
                if unavailable and self.storage_ok:
                    log.warning(
                        "dispatcher.ingest.storage_unavailable",
                        error=str(exc)
                        if isinstance(exc, StorageUnavailable)
                        else type(exc).__name__,
                        waiting=len(items) + self._waiting(),
                    )
                    self.storage_ok = False
                await backoff.wait()
                continue
            if not self.storage_ok:
                self.storage_ok = True
                log.info("dispatcher.ingest.storage_recovered")
            self._account(result, items)
            return

    async def _commit(self, items: list[Incoming], link: KeptConnection) -> BatchResult:
        """Write in one transaction. Deliveries leased to this replica's workers (the fast
        path) are handed to them once it has committed; their slots are given back if it
        has not."""
        result: BatchResult | None = None
        try:
            with wrap_db_errors():
                async with link.watched() as conn, conn.transaction():
                    result = await persist_batch(
                        conn,
                        items,
                        max_body_bytes=self._max_body,
                        recipient_key=self._recipient_key,
                        handoff=self._handoff,
                    )
        except BaseException:
            if result is not None and result.reservation is not None:
                result.reservation.release()
            raise
        if result.reservation is not None:
            result.reservation.start()
        return result

    async def _answers(self, link: KeptConnection) -> bool:
        """Whether PostgreSQL runs a query right now (on a fresh connection)."""
        try:
            with wrap_db_errors():
                conn = await link.driver()
                await conn.fetchval("SELECT 1", timeout=CONNECT_TIMEOUT)
        except Exception:  # noqa: BLE001 - any failure means "not now"
            await link.close(broken=True)
            return False
        return True

    def _account(self, result: BatchResult, items: Sequence[Incoming]) -> None:
        metrics.ingest_batch(
            len(items),
            stored=result.stored,
            duplicates=result.duplicates,
            rejected=[
                i.outcome.reason.value
                for i in items
                if isinstance(i.outcome, Rejection)
            ],
            published_at=[p for i in items if (p := i.published_at) is not None],
        )
        t = self.totals
        t.stored += result.stored
        t.duplicates += result.duplicates
        t.conflicts += result.conflicts
        t.rejected += result.rejected
        t.deliveries += result.deliveries
        for event_id in result.unrouted:
            log.warning("dispatcher.ingest.event_unrouted", event_id=str(event_id))
