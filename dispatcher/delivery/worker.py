"""One worker pool per channel: claim due deliveries, attempt them, hand outcomes on.

Bulkheads: each channel has its own pool, concurrency limit, providers, breakers and
retry policy, so a sick channel only ever holds its own slots. A few slots are kept for
critical deliveries, so a backlog of slow low-severity sends never makes a crisis alert
wait for a free slot.
"""

import asyncio
import contextlib
import contextvars
import random
from collections.abc import Callable

import structlog
from sqlalchemy.ext.asyncio import AsyncEngine

from dispatcher.db.engine import wrap_db_errors
from dispatcher.db.kept import KeptConnection
from dispatcher.delivery.expiry import ExpirySweep
from dispatcher.delivery.leads import Leads
from dispatcher.delivery.providers import Providers
from dispatcher.delivery.ready import ReadyRows
from dispatcher.delivery.recorder import Recorder
from dispatcher.delivery.reservations import SlotReservations
from dispatcher.delivery.send import send
from dispatcher.delivery.slots import Slots
from dispatcher.errors import DispatcherError
from dispatcher.events.kinds import LEAST_URGENT, ChannelKind, Severity
from dispatcher.outbox.claims import CLAIM_SESSION, Claimed, claim
from dispatcher.resilience.backoff import Backoff
from dispatcher.resilience.delivery_policy import ChannelDelivery

log = structlog.get_logger("dispatcher.delivery")

_CRITICAL = Severity.CRITICAL.priority


class ChannelWorker(SlotReservations):
    """Claims and sends one channel's deliveries with bounded concurrency."""

    def __init__(
        self,
        kind: ChannelKind,
        engine: AsyncEngine,
        providers: Providers,
        recorder: Recorder,
        settings: ChannelDelivery,
        *,
        wakeup: asyncio.Event,
        owner: str,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.kind = kind
        self._link = KeptConnection(engine, settings=CLAIM_SESSION)
        self._providers = providers
        self._recorder = recorder
        self._settings = settings
        self._slots = Slots(settings.concurrency, settings.critical_reserve)
        self._wakeup = wakeup
        self._owner = owner
        self._rand = rand
        self._expiry = ExpirySweep(kind, settings, owner=owner)
        self._slot_freed = asyncio.Event()
        self._short_of_slots = False
        self._capped: frozenset[str] = frozenset()
        #: While due rows wait for slots, claim once this many are free, not per slot:
        #: a claim costs about the same for one row as for eight.
        self._refill = max(1, settings.concurrency // 4)
        cap = settings.max_inflight_per_recipient
        self._cap_refill = max(1, cap // 4) if cap is not None else 1
        #: Recipients at their cap with critical rows behind it (delivery/leads.py).
        self._leads = Leads(cap)
        self._backlog_priority: int | None = None
        #: Critical rows claimed ahead of free slots (delivery/ready.py): four times
        #: the slots, so a backlog's claims lease about 2.5 x concurrency rows each.
        self._ready = ReadyRows(
            4 * settings.concurrency,
            (settings.lease_seconds - settings.try_seconds()) / 2,
        )
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._claiming = False
        #: Claim statements run so far; for tests and metrics.
        self.claims = 0
        self.fast = 0
        #: Rows leased by this worker's claims, and those of them claimed ahead of a
        #: free slot and started from ``_ready``.
        self.claimed = 0
        self.buffered = 0
        #: Rows claimed ahead and given back unstarted (too old, or the worker stopped).
        self.given_back = 0

    @property
    def inflight(self) -> int:
        return len(self._slots.inflight)

    @property
    def alive(self) -> bool:
        """Its claim loop is running (started, not stopped, not ended by an error)."""
        return self._task is not None and not self._task.done() and not self._stopping

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"worker-{self.kind}")

    async def stop(self, grace: float | None = None) -> None:
        """Stop claiming; let in-flight attempts finish so their outcomes are recorded.

        The default grace is the channel's longest provider try, so an email waiting for
        the reply to its final dot is heard out: abandoning it would send it again.
        """
        if grace is None:
            grace = self._settings.try_seconds()
        self._stopping = True
        self._wakeup.set()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
        self._give_back(self._ready.drain())
        # Inserts already holding slots commit (their rows are launched) or fail.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace):
                await self._slots.settled()
        if self._slots.inflight:
            _done, pending = await asyncio.wait(self._slots.inflight, timeout=grace)
            for task in pending:
                task.cancel()  # their leases expire and the rows are claimed again
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
                log.warning(
                    "dispatcher.delivery.stop_abandoned",
                    channel=self.kind.value,
                    in_flight=len(pending),
                )
        log.info(
            "dispatcher.delivery.worker_stopped",
            channel=self.kind.value,
            fast=self.fast,
            claims=self.claims,
            claimed=self.claimed,
            buffered=self.buffered,
            given_back=self.given_back,
        )

    async def _run(self) -> None:
        async with self._link.held():
            await self._claim_loop()

    async def _claim_loop(self) -> None:
        poll = self._settings.poll_interval
        backoff = Backoff(poll, max(poll, 10.0))
        while not self._stopping:
            if self._recorder.stalled():
                await self._hold_claims()
                continue
            try:
                await self._expiry.run_if_due(
                    self._link.driver, self._providers, self._recorder
                )
                claimed, full = await self._fill()
            except Exception as exc:  # noqa: BLE001 - the loop must outlive any bug
                await self._link.close(broken=True)
                log.warning(
                    "dispatcher.delivery.claim_failed"
                    if isinstance(exc, DispatcherError)
                    else "dispatcher.delivery.worker_bug",
                    channel=self.kind.value,
                    error_type=type(exc).__name__,
                )
                await backoff.wait()
                continue
            backoff.reset()
            if claimed and full:
                # A full batch: more may be due right now. Claim them now if enough slots
                # are free, else once enough have freed (not one claim per slot).
                if self._slots.free() >= self._refill:
                    continue
                self._short_of_slots = True
            await self._wait()

    async def _hold_claims(self) -> None:
        """Claim nothing while this replica's outcomes are not being recorded.

        Its sends would pile up unrecorded, and every lease that ran out under one would
        be claimed and sent again (docs/delivery.md, "Duplicates").
        """
        log.warning(
            "dispatcher.delivery.claims_paused",
            channel=self.kind.value,
            unrecorded=self._recorder.waiting,
        )
        while self._recorder.stalled() and not self._stopping:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._settings.poll_interval):
                    await self._recorder.progressed()
        log.info("dispatcher.delivery.claims_resumed", channel=self.kind.value)
        self._start_ready()

    async def _wait(self) -> None:
        """Until a notification, enough freed slots, or the sweep's interval."""
        while True:
            # Due rows may be waiting for a slot rather than for a notification: nothing
            # will announce them again, so freed slots start the next claim (``_finished``
            # and ``_fill`` set the event only when rows are waiting for them).
            waiters = [
                asyncio.ensure_future(self._wakeup.wait()),
                asyncio.ensure_future(self._slot_freed.wait()),
            ]
            _done, pending = await asyncio.wait(
                waiters,
                timeout=self._settings.poll_interval,
                return_when=asyncio.FIRST_COMPLETED,
            )
            for waiter in pending:
                waiter.cancel()
            freed, notified = self._slot_freed.is_set(), self._wakeup.is_set()
            self._wakeup.clear()
            self._slot_freed.clear()
            if freed or not notified or not self._notice_can_wait():
                return

    def _notice_can_wait(self) -> bool:
        """Whether a notification can wait for the slots a backlog is already waiting for.

        New rows queue behind due rows of the same priority, so while critical rows wait
        for slots a notification cannot bring anything more urgent: claiming one slot's
        worth per notification would only multiply claims.
        """
        return (
            not self._stopping
            and self._short_of_slots
            and self._backlog_priority == _CRITICAL
            and self._slots.free() < self._refill
        )

    async def _fill(self) -> tuple[int, bool]:
        """Claim as many due deliveries as there are free slots, and while critical rows
        wait for slots as many more as ``_ready`` has room for; (claimed, batch was full)."""
        self._start_ready()
        free, general = self._slots.free(), self._slots.general_free()
        self._short_of_slots = free <= 0 or general <= 0
        ahead = self._ready.room() if self._backlog_priority == _CRITICAL else 0
        if (free <= 0 and not ahead) or self._providers.all_open_until() is not None:
            return 0, False
        # Reserved slots only ever take critical deliveries.
        limit, max_priority = (
            (free + ahead, _CRITICAL)
            if ahead or general <= 0
            else (min(free, general), LEAST_URGENT)
        )
        blocked = self._providers.blocked_recipients()
        # Claiming ahead channel-wide already gives every recipient an allowance.
        leads = frozenset() if ahead else self._leads.usable(blocked)
        busy = self._slots.per_recipient + self._ready.per_recipient
        if leads:
            limit += self._ready.room()
        self.claims += 1
        # This claim is the refill that freed slots asked for. It reads the capped
        # recipients' rows again, so until it says what it left behind, only a channel
        # short of slots can ask for the next one.
        self._slot_freed.clear()
        self._capped = frozenset()
        self._claiming = True
        try:
            with wrap_db_errors():
                rows, considered, capped, left = await claim(
                    await self._link.driver(),
                    self.kind.value,
                    limit=limit,
                    lease_seconds=self._settings.lease_seconds,
                    owner=self._owner,
                    blocked=blocked,
                    max_priority=max_priority,
                    cap=self._claim_cap(ahead),
                    in_flight=self._leads.allow(busy, leads),
                )
        finally:
            self._claiming = False
        self.claimed += len(rows)
        if leads:
            rows, back = self._leads.only_critical_ahead(
                rows, leads, busy, min(free, general)
            )
            self._give_back(back)
            # Due again, behind their recipient's cap or the slots: its attempts ending,
            # or enough freed slots, claim them (and the fast path waits behind them).
            capped |= {row.recipient for row in back}
            self._short_of_slots = self._short_of_slots or bool(back)
        waiting = len(self._ready)
        self._ready.add(rows)
        self._start_ready()
        # Older rows start first: those still waiting are this claim's, claimed ahead.
        self.buffered += max(0, len(self._ready) - waiting)
        # What the claim left behind, not what is in flight now: attempts that ended
        # during the claim may have taken a recipient below its cap although its rows
        # still wait. Their room counts now, so they may start the next claim at once.
        self._capped = capped
        self._leads.learn(capped, left)
        if any(self._room(r) >= self._cap_refill for r in capped):
            self._slot_freed.set()
        # A full set of candidates: more may be due now, even if the cap left some behind.
        full = considered == limit
        if not full:
            self._backlog_priority = None
            # No critical row left to claim ahead: the next claim (at once if slots
            # are free) takes whatever else is due.
            full = bool(ahead) and self._slots.free() > 0
        elif rows:
            # Claimed most urgent first: what was left is no more urgent than the last.
            self._backlog_priority = rows[-1].priority
        return len(rows), full

    def _launch(self, row: Claimed) -> None:
        """Attempt a leased row in a slot; its recipient is already counted. In a context
        of its own: a fast-path row is launched from ingest's batch (its span, its log
        context), a claimed one from the claim loop, and both must run alike."""
        task = asyncio.create_task(
            send(
                row,
                kind=self.kind,
                providers=self._providers,
                settings=self._settings,
                recorder=self._recorder,
                rand=self._rand,
            ),
            context=contextvars.Context(),
        )
        self._slots.start(task, row.priority, row.recipient)
        task.add_done_callback(self._finished)

    def _claim_cap(self, ahead: int) -> int | None:
        """The cap a claim applies to a recipient's attempts and rows claimed ahead
        together: its cap, and as much again while the claim claims ahead
        (delivery/ready.py), so an endpoint at its cap still has rows ready to start."""
        cap = self._settings.max_inflight_per_recipient
        return None if cap is None else cap + (cap if ahead else 0)

    def _room(self, recipient: str) -> int:
        """Rows of ``recipient`` a claim that does not claim ahead could start now."""
        cap = self._settings.max_inflight_per_recipient
        busy = (
            self._slots.per_recipient[recipient] + self._ready.per_recipient[recipient]
        )
        return 0 if cap is None else cap - busy

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._freed(self._slots.finish(task))
        if not task.cancelled() and task.exception() is not None:
            log.error(
                "dispatcher.delivery.worker_bug",
                channel=self.kind.value,
                error_type=type(task.exception()).__name__,
            )

    def _freed(self, recipient: str) -> None:
        """A slot of ``recipient`` is free again: start the next row claimed ahead, and
        wake the claim rows wait for (claim ahead again once ``_refill`` or fewer are
        left: enough to keep the slots busy while the claim runs)."""
        self._start_ready()
        if (
            (self._short_of_slots and self._slots.free() >= self._refill)
            or (recipient in self._capped and self._room(recipient) >= self._cap_refill)
            or (
                not self._claiming
                and self._leads.wants_refill(
                    recipient, self._ready.per_recipient[recipient]
                )
            )
            or (
                self._backlog_priority == _CRITICAL and len(self._ready) <= self._refill
            )
        ):
            self._slot_freed.set()
