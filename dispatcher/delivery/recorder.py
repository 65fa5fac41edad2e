"""Group commit of delivery outcomes: every attempt and state change, batched per transaction.

Outcomes that arrive one by one (a steady trickle of events, each finishing on three
channels at slightly different times) wait up to ``LINGER`` for others before they are
written, so a statement and a commit serve several of them instead of one: PostgreSQL's
work per outcome is mostly per statement at that rate (docs/benchmarks.md). The attempt is
over by then and its slot free; only the row's new state is later. A backlog never waits:
the oldest outcome has usually waited that long while the previous batch was written.

An outcome waiting here belongs to a delivery that is still leased to this replica. If it
waited past the lease, another claim would send the delivery again, once per lease for as
long as the recorder stays stuck. So the recorder gives up on a statement that hangs (a
connection that died half-open answers nothing) and writes again on a new connection,
renews the leases of outcomes that wait too long from a connection of their own, and
tells the workers to stop claiming meanwhile (``stalled``). Log lines about an outcome
(dead letter, retry, discarded) are written once it is committed: only then are they true.
"""

import asyncio
import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog
from sqlalchemy.ext.asyncio import AsyncEngine

from dispatcher.db.engine import wrap_db_errors
from dispatcher.db.kept import KeptConnection
from dispatcher.db.states import DeliveryStatus
from dispatcher.errors import DispatcherError, StorageConflict, StorageUnavailable
from dispatcher.outbox.outcomes import (
    OUTCOME_SESSION,
    Applied,
    AuditNote,
    DeadLettered,
    Outcome,
    complete,
    renew,
)
from dispatcher.resilience.backoff import Backoff

log = structlog.get_logger("dispatcher.delivery")

#: An outcome unrecorded for this long is late: claims stop and its lease is renewed.
#: Recording normally takes milliseconds.
STALL_AFTER = 2.0
#: A recording statement (with its connection checkout) taking longer is abandoned and
#: written again on a new connection. One batch normally takes milliseconds.
RECORD_TIMEOUT = 10.0
#: This many outcomes waiting also stop claims: the recorder has fallen behind.
MAX_WAITING = 2000
#: How long the oldest unwritten outcome waits for others to share its statement.
LINGER = 0.02
#: A batch this big is written at once, lingering or not.
LINGER_UNTIL = 64


@dataclass(slots=True)
class _Waiting:
    outcome: Outcome
    #: The channel's lease, what a renewal gives the delivery again.
    lease: float
    #: ``time.monotonic()`` when it was added, and when its lease was last renewed.
    since: float
    renewed: float | None = None

    def renewal_due(self, now: float, stall_after: float) -> bool:
        if self.renewed is None:
            return now - self.since >= stall_after
        return now - self.renewed >= self.lease / 3


class Recorder:
    """Collects outcomes from senders and writes whatever is waiting in one transaction."""

    def __init__(
        self,
        engine: AsyncEngine,
        on_dead: Callable[[list[DeadLettered]], None] | None = None,
        *,
        batch_max: int = 500,
        timeout: float = RECORD_TIMEOUT,
        stall_after: float = STALL_AFTER,
        max_waiting: int = MAX_WAITING,
        linger: float = LINGER,
    ) -> None:
        self._link = KeptConnection(engine, settings=OUTCOME_SESSION)
        self._lease_link = KeptConnection(engine)
        self._on_dead = on_dead
        self._batch_max = batch_max
        self._timeout = timeout
        self._stall_after = stall_after
        self._max_waiting = max_waiting
        self._linger = linger
        self._outcomes: list[_Waiting] = []
        #: The batch the current statement writes, oldest first.
        self._writing: list[_Waiting] = []
        self._notes: list[AuditNote] = []
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        #: Set (and replaced) whenever waiting outcomes were written or dropped.
        self._progress = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._keeper: asyncio.Task[None] | None = None
        self._stopping = False

    def add(self, outcome: Outcome, *, lease_seconds: float) -> None:
        """Queue an outcome; ``lease_seconds`` is its channel's lease, for renewals."""
        self._outcomes.append(_Waiting(outcome, lease_seconds, time.monotonic()))
        self._idle.clear()
        # The writer waits for a first outcome, then lingers until the batch is due
        # (its own timer) or full: the outcomes in between need not wake it, which
        # would cost a task switch and a new timer per outcome.
        if len(self._outcomes) == 1 or len(self._outcomes) >= LINGER_UNTIL:
            self._wakeup.set()

    def note(self, kind: str, **detail: object) -> None:
        """Queue an audit entry (ids and codes only) for the next transaction."""
        self._notes.append(AuditNote(kind, json.dumps(detail, default=str)))
        self._idle.clear()
        self._wakeup.set()

    @property
    def waiting(self) -> int:
        """Outcomes not yet committed."""
        return len(self._writing) + len(self._outcomes)

    def stalled(self) -> bool:
        """Whether outcomes are not being recorded, so claims must wait (back-pressure).

        True while one has waited ``stall_after`` or longer, or ``max_waiting`` wait.
        """
        if self.waiting >= self._max_waiting:
            return True
        oldest = self._writing or self._outcomes
        return bool(oldest) and time.monotonic() - oldest[0].since >= self._stall_after

    async def progressed(self) -> None:
        """Until the next batch of outcomes is written (or dropped)."""
        await self._progress.wait()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="delivery-recorder")
        self._keeper = asyncio.create_task(self._keep_leases(), name="lease-keeper")

    async def flush(self) -> None:
        """Wait until everything added so far is written."""
        await self._idle.wait()

    async def stop(self, grace: float = 30.0) -> None:
        self._stopping = True
        self._wakeup.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, grace)
            except TimeoutError:
                log.warning(
                    "dispatcher.delivery.stop_abandoned", unrecorded=self.waiting
                )
        if self._keeper is not None:
            self._keeper.cancel()
            await asyncio.gather(self._keeper, return_exceptions=True)

    async def _write(
        self, outcomes: list[Outcome], notes: list[AuditNote]
    ) -> list[tuple[Outcome, Applied | None]]:
        """One transaction for the batch; if PostgreSQL refuses it, one per outcome.

        Returns each committed outcome with what it applied (None: fenced off). A refused
        outcome is dropped and logged by id: its lease expires and the delivery is
        attempted again, which is the safe direction.
        """
        conn: Any = None
        try:
            with wrap_db_errors():
                # A connection that died half-open answers nothing until the command
                # timeout (60 s); asyncpg cancels the statement on the server if it can.
                async with asyncio.timeout(self._timeout):
                    conn = await self._link.driver()
                    applied = await complete(conn, outcomes, notes)
        except StorageUnavailable:
            await self._abandon(self._link, conn)
            raise
        except StorageConflict:
            if len(outcomes) + len(notes) <= 1:
                raise
        else:
            done = {(a.delivery_id, a.lease_token): a for a in applied}
            return [(o, done.get((o.delivery_id, o.lease_token))) for o in outcomes]
        results: list[tuple[Outcome, Applied | None]] = []
        for outcome in outcomes:
            try:
                results += await self._write([outcome], [])
            except StorageConflict:
                log.error(
                    "dispatcher.delivery.record_refused",
                    delivery_id=str(outcome.delivery_id),
                )
        for note in notes:
            try:
                await self._write([], [note])
            except StorageConflict:
                log.error("dispatcher.delivery.note_refused", kind=note.kind)
        return results

    @staticmethod
    async def _abandon(link: KeptConnection, conn: Any) -> None:
        """Drop a connection after a failed statement, without a word to the server.

        A graceful close would wait for a dead peer, and whatever the connection still
        holds (an unsent statement) must never arrive: the batch is written again on a
        new connection.
        """
        if conn is not None:
            conn.terminate()
        await link.close(broken=True)

    async def _run(self) -> None:
        async with self._link.held():
            await self._write_batches()

    async def _write_batches(self) -> None:
        backoff = Backoff(0.1, 5.0)
        while True:
            if not self._outcomes and not self._notes:
                self._idle.set()
                if self._stopping:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            await self._lingered()
            batch, self._outcomes = (
                self._outcomes[: self._batch_max],
                self._outcomes[self._batch_max :],
            )
            notes, self._notes = self._notes, []
            self._writing = batch
            try:
                results = await self._write([w.outcome for w in batch], notes)
            except StorageUnavailable as exc:
                # Keep them: their leases are renewed meanwhile, and expire if we never
                # get back.
                log.warning(
                    "dispatcher.delivery.record_failed",
                    error_type=type(exc.__cause__ or exc).__name__,
                    waiting=self.waiting,
                )
                self._writing = []
                self._outcomes[:0] = batch
                self._notes[:0] = notes
                await backoff.wait()
                continue
            except StorageConflict:
                log.error("dispatcher.delivery.record_refused", dropped=len(batch))
                results = []
            self._writing = []
            self._progress.set()
            self._progress = asyncio.Event()
            backoff.reset()
            self._report(results)

    async def _lingered(self) -> None:
        """Until the oldest outcome has waited ``linger``, or enough wait, or stopping."""
        if not self._outcomes:
            return  # audit notes alone: as they come
        due = self._outcomes[0].since + self._linger
        while not self._stopping and len(self._outcomes) < LINGER_UNTIL:
            delay = due - time.monotonic()
            if delay <= 0:
                return
            self._wakeup.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wakeup.wait()

    def _report(self, results: list[tuple[Outcome, Applied | None]]) -> None:
        """Log what was committed, and hand dead letters to the mirror."""
        dead: list[DeadLettered] = []
        for outcome, applied in results:
            if applied is None:
                # The lease expired and another claim took the delivery over: whatever
                # this attempt found out, the newer claim decides the row.
                log.warning(
                    "dispatcher.delivery.outcome_fenced",
                    delivery_id=str(outcome.delivery_id),
                    discarded=outcome.status.value,
                    reason="lease_lost",
                )
            elif applied.status is DeliveryStatus.DEAD:
                dead.append(applied.dead_letter())
                log.warning(
                    "dispatcher.delivery.dead_lettered",
                    delivery_id=str(applied.delivery_id),
                    event_id=str(applied.event_id),
                    channel=applied.channel,
                    error_class=applied.error_class,
                    reason=applied.dead_reason,
                    attempts=applied.attempts,
                )
            elif applied.status is DeliveryStatus.PENDING and not outcome.refund:
                log.info(
                    "dispatcher.delivery.retry_scheduled",
                    delivery_id=str(applied.delivery_id),
                    event_id=str(applied.event_id),
                    channel=applied.channel,
                    error_class=applied.error_class,
                    attempts=applied.attempts,
                )
        if dead and self._on_dead is not None:
            # Hands over and returns: the mirror publishes in its own task.
            self._on_dead(dead)

    async def _keep_leases(self) -> None:
        """Renew the leases of outcomes that wait too long, on a connection of its own.

        Whatever holds the recorder up (a statement on a dead connection, a slow server),
        a replica that is alive keeps what it claimed. If PostgreSQL is unreachable on
        every connection, renewals fail too and the leases run out: the one case where
        another replica sends such a delivery again (docs/delivery.md).
        """
        try:
            while True:
                await asyncio.sleep(self._stall_after / 4)
                now = time.monotonic()
                due = [
                    w
                    for w in (*self._writing, *self._outcomes)
                    if w.renewal_due(now, self._stall_after)
                ]
                if due:
                    await self._renew(due)
                elif not self.waiting:
                    await self._lease_link.close()
        except BaseException:
            await self._lease_link.close(broken=True)
            raise

    async def _renew(self, due: list[_Waiting]) -> None:
        leases = [(w.outcome.delivery_id, w.outcome.lease_token, w.lease) for w in due]
        conn: Any = None
        try:
            with wrap_db_errors():
                async with asyncio.timeout(self._stall_after):
                    conn = await self._lease_link.driver()
                    renewed = await renew(conn, leases)
        except DispatcherError as exc:
            await self._abandon(self._lease_link, conn)
            log.warning(
                "dispatcher.delivery.lease_renewal_failed",
                error_type=type(exc).__name__,
                waiting=len(due),
            )
            return
        if not renewed:
            return  # taken over already, or locked by a statement under way: next round
        now = time.monotonic()
        for w in due:
            if w.outcome.delivery_id in renewed:
                w.renewed = now
        log.info("dispatcher.delivery.leases_renewed", renewed=len(renewed))
