"""Group commit of delivery outcomes: every attempt and state change, batched per transaction.

Log lines about an outcome (dead letter, retry, discarded) are written once it is
committed: only then are they true.
"""

import asyncio
import json
from collections.abc import Callable

import structlog
from sqlalchemy.ext.asyncio import AsyncEngine

from dispatcher.db.engine import KeptConnection, wrap_db_errors
from dispatcher.db.models import DeliveryStatus
from dispatcher.errors import StorageConflict, StorageUnavailable
from dispatcher.outbox.store import Applied, AuditNote, DeadLettered, Outcome, complete

log = structlog.get_logger("dispatcher.delivery")


class Recorder:
    """Collects outcomes from senders and writes whatever is waiting in one transaction."""

    def __init__(
        self,
        engine: AsyncEngine,
        on_dead: Callable[[list[DeadLettered]], None] | None = None,
        *,
        batch_max: int = 500,
    ) -> None:
        self._link = KeptConnection(engine)
        self._on_dead = on_dead
        self._batch_max = batch_max
        self._outcomes: list[Outcome] = []
        self._notes: list[AuditNote] = []
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    def add(self, outcome: Outcome) -> None:
        self._outcomes.append(outcome)
        self._idle.clear()
        self._wakeup.set()

    def note(self, kind: str, **detail: object) -> None:
        """Queue an audit entry (ids and codes only) for the next transaction."""
        self._notes.append(AuditNote(kind, json.dumps(detail, default=str)))
        self._idle.clear()
        self._wakeup.set()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="delivery-recorder")

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
                    "dispatcher.delivery.stop_abandoned", unrecorded=len(self._outcomes)
                )

    async def _write(
        self, outcomes: list[Outcome], notes: list[AuditNote]
    ) -> list[tuple[Outcome, Applied | None]]:
        """One transaction for the batch; if PostgreSQL refuses it, one per outcome.

        Returns each committed outcome with what it applied (None: fenced off). A refused
        outcome is dropped and logged by id: its lease expires and the delivery is
        attempted again, which is the safe direction.
        """
        try:
            with wrap_db_errors():
                applied = await complete(await self._link.driver(), outcomes, notes)
        except StorageUnavailable:
            await self._link.close(broken=True)
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

    async def _run(self) -> None:
        try:
            await self._write_batches()
        except BaseException:
            # Perhaps mid-statement: never hand it back to the pool as it is.
            await self._link.close(broken=True)
            raise
        await self._link.close()

    async def _write_batches(self) -> None:
        delay = 0.1
        while True:
            if not self._outcomes and not self._notes:
                self._idle.set()
                if self._stopping:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            outcomes, self._outcomes = (
                self._outcomes[: self._batch_max],
                self._outcomes[self._batch_max :],
            )
            notes, self._notes = self._notes, []
            try:
                results = await self._write(outcomes, notes)
            except StorageUnavailable as exc:
                # Keep them: the leases still protect the rows, and expire if we never get back.
                log.warning(
                    "dispatcher.delivery.record_failed",
                    error_type=type(exc.__cause__ or exc).__name__,
                    waiting=len(outcomes),
                )
                self._outcomes[:0] = outcomes
                self._notes[:0] = notes
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            except StorageConflict:
                log.error("dispatcher.delivery.record_refused", dropped=len(outcomes))
                continue
            delay = 0.1
            self._report(results)

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
