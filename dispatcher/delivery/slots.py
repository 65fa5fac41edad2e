"""A channel worker's slots: attempts in flight and slots held for the fast path.

Both count as taken, for the claims and for the fast path alike, and both count against
their recipient's cap: a slot held for a row being inserted is as good as an attempt. Rows
claimed ahead and waiting for a slot (``delivery/ready.py``) are not in flight: they count
here only once started.
"""

import asyncio
from collections import Counter

from dispatcher.events.kinds import Severity

_CRITICAL = Severity.CRITICAL.priority


class Slots:
    """``concurrency`` slots, ``reserve`` of them for critical deliveries only."""

    def __init__(self, concurrency: int, critical_reserve: int) -> None:
        self.concurrency = concurrency
        self.reserve = min(critical_reserve, concurrency - 1)
        #: Task -> (priority, recipient) of the delivery it attempts.
        self.inflight: dict[asyncio.Task[None], tuple[int, str]] = {}
        #: Attempts in flight and slots held, per recipient: what a cap counts.
        self.per_recipient: Counter[str] = Counter()
        #: Held for rows the fast path is inserting, until launched or given back.
        self.held = 0
        self._held_general = 0
        self._none_held = asyncio.Event()
        self._none_held.set()

    def free(self) -> int:
        return self.concurrency - len(self.inflight) - self.held

    def general_free(self) -> int:
        """Free slots a delivery that is not critical may take."""
        general = sum(1 for p, _ in self.inflight.values() if p > _CRITICAL)
        return self.concurrency - self.reserve - general - self._held_general

    def hold(self, priority: int, recipient: str) -> None:
        self.held += 1
        self._held_general += priority > _CRITICAL
        self.per_recipient[recipient] += 1
        self._none_held.clear()

    def unhold(self, priority: int) -> None:
        """A held slot becomes an attempt, or is given back (then ``release`` it too)."""
        self.held -= 1
        self._held_general -= priority > _CRITICAL
        if not self.held:
            self._none_held.set()

    def count(self, recipient: str) -> None:
        """A leased row is about to start: count it against its recipient's cap."""
        self.per_recipient[recipient] += 1

    def start(self, task: asyncio.Task[None], priority: int, recipient: str) -> None:
        """An attempt in a slot; its recipient is already counted."""
        self.inflight[task] = (priority, recipient)

    def finish(self, task: asyncio.Task[None]) -> str:
        """The attempt ended: free its slot; its recipient."""
        _, recipient = self.inflight.pop(task, (0, ""))
        self.release(recipient)
        return recipient

    def release(self, recipient: str) -> None:
        self.per_recipient[recipient] -= 1
        if self.per_recipient[recipient] <= 0:
            del self.per_recipient[recipient]

    async def settled(self) -> None:
        """Until no slot is held for an insert (each committed or failed)."""
        await self._none_held.wait()
