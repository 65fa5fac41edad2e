"""A channel worker's place in its queue, and the fast path's slots (``SlotReservations``).

Ingest's batch writer asks each worker, before it inserts new rows, which of them it can
take now (``reserve``); the insert leases those to this replica and hands them over after
the commit (``launch``) or gives the slots back (``unreserve``), docs/delivery.md, "The
fast path". A worker takes a new row only where a claim would have, and never ahead of
rows already waiting for its slots: so this holds, beside the slots, what the claim loop
last learnt about the queue (``short_of_slots``, ``backlog_priority``, ``capped``), which
the claim loop of ``ChannelWorker`` (delivery/worker.py) keeps up to date.
"""

from collections.abc import Sequence
from datetime import UTC, datetime

import structlog

from dispatcher.db.states import DeliveryStatus
from dispatcher.delivery.providers import Providers
from dispatcher.delivery.ready import ReadyRows
from dispatcher.delivery.recorder import Recorder
from dispatcher.delivery.slots import Slots
from dispatcher.events.kinds import LEAST_URGENT, ChannelKind, Severity
from dispatcher.outbox.claims import Claimed
from dispatcher.outbox.outcomes import Outcome
from dispatcher.resilience.delivery_policy import ChannelDelivery

log = structlog.get_logger("dispatcher.delivery")

_CRITICAL = Severity.CRITICAL.priority


class SlotReservations:
    """The fast path's side of a channel worker; ``ChannelWorker`` is the other."""

    kind: ChannelKind
    _settings: ChannelDelivery
    _slots: Slots
    _providers: Providers
    _recorder: Recorder
    #: Set by the last fill when it had to leave due rows behind for want of a slot:
    #: every slot (or every general slot) taken.
    _short_of_slots: bool
    #: Priority of the rows the last full claim left behind (None: none known).
    _backlog_priority: int | None
    #: Recipients the last claim left due rows behind for at their cap, as the claim
    #: reported them; empty while a claim runs (it reads them again).
    _capped: frozenset[str]
    #: A claim statement is running: it counts the slots without new reservations.
    _claiming: bool
    #: Rows started on the fast path (leased by ingest's insert), not by a claim.
    fast: int
    #: Rows claimed ahead of a free slot, started as slots free (delivery/ready.py).
    _ready: ReadyRows
    buffered: int
    given_back: int
    _stopping: bool

    @property
    def alive(self) -> bool:
        """Its claim loop is running (started, not stopped, not ended by an error)."""
        raise NotImplementedError

    def _launch(self, row: Claimed) -> None:
        """Attempt a leased row in a slot; its recipient is already counted."""
        raise NotImplementedError

    def _freed(self, recipient: str) -> None:
        """A slot of ``recipient`` is free again: wake the claim rows wait for."""
        raise NotImplementedError

    def reserve(self, offers: Sequence[tuple[str, int]]) -> list[int]:
        """Slots for new rows ``(recipient, priority)`` of this channel: the positions
        taken, most urgent first, by the rules of a claim. Never waits.

        A claim's rules: reserved slots take only critical rows, a recipient gets at most
        its room under the cap, a blocked recipient (breaker open) or a channel whose every
        provider is open gets none. Rows already waiting for slots go first: while the
        last fill or reservation left rows behind for want of a slot, only more urgent
        ones are taken, and rows of a recipient the last claim left behind at its cap wait
        with them. None while a claim runs (it counts the slots without these), while
        outcomes are not being recorded, or when the worker is not running. Each slot
        held must be ``launch``ed or ``unreserve``d.
        """
        if (
            not self.alive
            or self._claiming
            or self._recorder.stalled()
            or self._providers.all_open_until() is not None
        ):
            return []
        cap = self._settings.max_inflight_per_recipient
        skip = {*self._providers.blocked_recipients(), *self._capped}
        ceiling = LEAST_URGENT
        if self._short_of_slots:
            known = self._backlog_priority
            ceiling = _CRITICAL if known is None else known - 1
        head = self._ready.head_priority()
        if head is not None:
            # Rows claimed ahead wait for slots: only more urgent ones go first.
            ceiling = min(ceiling, head - 1)
        taken: list[int] = []
        short: int | None = None
        for n in sorted(range(len(offers)), key=lambda n: offers[n][1]):
            recipient, priority = offers[n]
            if priority > ceiling or recipient in skip:
                continue
            if self._slots.free() <= 0 or (
                priority > _CRITICAL and self._slots.general_free() <= 0
            ):
                short = priority if short is None else min(short, priority)
                continue
            if cap is not None and self._slots.per_recipient[recipient] >= cap:
                self._capped |= {recipient}
                continue
            self._slots.hold(priority, recipient)
            taken.append(n)
        if short is not None:
            # As a fill that found no slot: the rows wait, and freed slots claim them.
            known = self._backlog_priority
            self._short_of_slots = True
            self._backlog_priority = short if known is None else min(known, short)
        return taken

    def launch(self, row: Claimed) -> None:
        """Attempt a row the fast path leased, in the slot ``reserve`` held for it."""
        self._slots.unhold(row.priority)
        self.fast += 1
        self._launch(row)

    def unreserve(self, recipient: str, priority: int) -> None:
        """Give back a slot ``reserve`` held: its row was not leased to this worker."""
        self._slots.unhold(priority)
        self._slots.release(recipient)
        self._freed(recipient)

    @property
    def lease_seconds(self) -> float:
        return self._settings.lease_seconds

    def _start_ready(self) -> None:
        """Start rows claimed ahead in the slots free for them, most urgent first, each
        only while its recipient has room under the cap (a row at its cap waits, later
        ones of other recipients start); give back those too old to start. None while
        stopping or while outcomes are not being recorded (as claims,
        ``ChannelWorker._hold_claims``)."""
        if self._stopping or self._recorder.stalled():
            return
        while len(self._ready) and self._slots.free() > 0:
            row, stale = self._ready.take(self._may_start)
            self._give_back(stale)
            if row is None:
                return
            self._slots.count(row.recipient)
            self._launch(row)

    def _may_start(self, row: Claimed) -> bool:
        """A free slot may take ``row``: reserved slots only critical rows, and its
        recipient has room under the cap."""
        cap = self._settings.max_inflight_per_recipient
        return (row.priority <= _CRITICAL or self._slots.general_free() > 0) and (
            cap is None or self._slots.per_recipient[row.recipient] < cap
        )

    def _give_back(self, rows: Sequence[Claimed]) -> None:
        """Rows claimed ahead and never started: pending and due again, the attempt the
        claim counted refunded, through the recorder (fenced by their tokens)."""
        if not rows:
            return
        now = datetime.now(UTC)
        self.given_back += len(rows)
        for row in rows:
            self._recorder.add(
                Outcome(
                    row.id,
                    row.lease_token,
                    DeliveryStatus.PENDING,
                    next_attempt_at=now,
                    refund=1,
                ),
                lease_seconds=self._settings.lease_seconds,
            )
        log.info(
            "dispatcher.delivery.ready_given_back",
            channel=self.kind.value,
            rows=len(rows),
        )
