"""Rows a channel worker has claimed ahead of its free slots, started as slots free.

While a backlog of critical rows waits for slots, a claim leases up to ``capacity`` rows
more than the worker has free slots for; each slot that frees then starts the next of
them at once, without a claim round trip, and the claims are fewer and larger. Only
critical rows are claimed ahead: nothing that arrives later can be more urgent, and a
critical row that arrives later is younger, so it waits behind them exactly as it would
in the table (FIFO within a priority); the fast path takes no new row while they wait.

A recipient's cap (``max_inflight_per_recipient``) counts attempts in flight to it (and
slots the fast path holds for it), not rows waiting here: a row waiting here is leased but
not sent, and the cap protects the receiver. So a row starts when a slot is free *and* its
recipient has room under the cap; the first such row in order starts, and a row whose
recipient is at its cap does not hold up a later one whose recipient has room (no
head-of-line blocking). What a claim may lease per recipient is bounded instead: its room
is ``cap + allowance - (in flight + waiting here)``, where the allowance is ``cap`` while
the claim claims ahead, ``2 x cap`` for a recipient the worker knows to have critical rows
left behind at its cap (a "lead", delivery/worker.py), and 0 otherwise. So an endpoint at
its cap has at most ``2 x cap`` rows waiting here, and a claim leases no more of any other
recipient's rows than can start at once. Overall at most ``capacity`` rows wait (the worker makes it four
times its slots).

A row here is leased like any claimed row, so nobody else sends it. It is started only
while its lease is young: at most ``max_age`` seconds old (half of what the lease has
beyond one provider try), so an attempt started from here has as much lease left as it
needs and the recorder's renewals never have to cover a row that waits here. An older one
(every slot hung on slow sends, or its recipient's attempts hung at the cap) and
everything here when the worker stops is given back (``pending``, due now, the attempt
refunded), for whichever replica claims first. A row whose recipient's breaker opened
while it waited is started like one claimed just then: its attempt finds the breaker open
and defers it (``delivery/attempt.py``).
"""

import time
from collections import Counter
from collections.abc import Callable, Iterable

from dispatcher.outbox.claims import Claimed


class ReadyRows:
    """At most ``capacity`` leased rows (more only for a moment: what one claim brought
    for the free slots), most urgent first, claim order within a priority."""

    __slots__ = ("_clock", "_rows", "capacity", "max_age", "per_recipient")

    def __init__(
        self,
        capacity: int,
        max_age: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.capacity = capacity
        self.max_age = max_age
        self._clock = clock
        self._rows: list[tuple[Claimed, float]] = []
        #: Rows waiting here per recipient: with its attempts, what its claims count.
        self.per_recipient: Counter[str] = Counter()

    def __len__(self) -> int:
        return len(self._rows)

    def room(self) -> int:
        return max(0, self.capacity - len(self._rows))

    def head_priority(self) -> int | None:
        return self._rows[0][0].priority if self._rows else None

    def add(self, rows: Iterable[Claimed]) -> None:
        """Rows a claim has just leased (older rows of a priority stay in front)."""
        now = self._clock()
        for row in rows:
            self._rows.append((row, now))
            self.per_recipient[row.recipient] += 1
        self._rows.sort(key=lambda entry: entry[0].priority)  # stable

    def take(
        self, startable: Callable[[Claimed], bool]
    ) -> tuple[Claimed | None, list[Claimed]]:
        """The first row in order still young enough to start that ``startable`` lets
        start (rows it refuses stay, in their place), and every row too old to start (to
        be given back)."""
        oldest = self._clock() - self.max_age
        stale = [row for row, leased in self._rows if leased < oldest]
        if stale:
            self._rows = [entry for entry in self._rows if entry[1] >= oldest]
            self._forget(stale)
        for n, (row, _) in enumerate(self._rows):
            if startable(row):
                del self._rows[n]
                self._forget((row,))
                return row, stale
        return None, stale

    def drain(self) -> list[Claimed]:
        """Everything here, to be given back."""
        rows = [row for row, _ in self._rows]
        self._rows.clear()
        self.per_recipient.clear()
        return rows

    def _forget(self, rows: Iterable[Claimed]) -> None:
        for row in rows:
            self.per_recipient[row.recipient] -= 1
            if self.per_recipient[row.recipient] <= 0:
                del self.per_recipient[row.recipient]
