"""Rows a channel worker has claimed ahead of its free slots, started as slots free.

While a backlog of critical rows waits for slots, a claim leases up to ``capacity`` rows
more than the worker has free slots for; each slot that frees then starts the next of
them at once, without a claim round trip, and the claims are fewer and larger. Only
critical rows are claimed ahead: nothing that arrives later can be more urgent, and a
critical row that arrives later is younger, so it waits behind them exactly as it would
in the table (FIFO within a priority); the fast path takes no new row while they wait.

A row here is leased like any claimed row, so nobody else sends it. It is started only
while its lease is young: at most ``max_age`` seconds old (half of what the lease has
beyond one provider try), so an attempt started from here has as much lease left as it
needs and the recorder's renewals never have to cover a row that waits here. An older one
(every slot hung on slow sends) and everything here when the worker stops is given back
(``pending``, due now, the attempt refunded), for whichever replica claims first.
"""

import time
from collections.abc import Callable, Iterable

from dispatcher.outbox.claims import Claimed


class ReadyRows:
    """At most ``capacity`` leased rows (more only for a moment: what one claim brought
    for the free slots), most urgent first, claim order within a priority."""

    __slots__ = ("_clock", "_rows", "capacity", "max_age")

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

    def __len__(self) -> int:
        return len(self._rows)

    def room(self) -> int:
        return max(0, self.capacity - len(self._rows))

    def head_priority(self) -> int | None:
        return self._rows[0][0].priority if self._rows else None

    def add(self, rows: Iterable[Claimed]) -> None:
        """Rows a claim has just leased (older rows of a priority stay in front)."""
        now = self._clock()
        self._rows.extend((row, now) for row in rows)
        self._rows.sort(key=lambda entry: entry[0].priority)  # stable

    def take(self) -> tuple[Claimed | None, list[Claimed]]:
        """The most urgent row still young enough to start, and the older ones passed
        over on the way (to be given back)."""
        stale: list[Claimed] = []
        oldest = self._clock() - self.max_age
        while self._rows:
            row, leased = self._rows.pop(0)
            if leased >= oldest:
                return row, stale
            stale.append(row)
        return None, stale

    def drain(self) -> list[Claimed]:
        """Everything here, to be given back."""
        rows = [row for row, _ in self._rows]
        self._rows.clear()
        return rows
