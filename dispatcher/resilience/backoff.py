"""How long a loop waits before its next try: exponential backoff with full jitter.

One rule for every loop that retries (reconnects, rewrites, republishes) and for the
durable retry schedule of deliveries (``retry.decide``): the delay is drawn uniformly
from ``[0, min(cap, base * 2**(failures - 1))]``. The jitter matters when many replicas
lose the same PostgreSQL or broker at once: without it they would all come back in
lockstep, and hammer it on the same tick after every failure.
"""

import asyncio
import random
from collections.abc import Callable

# 2.0**1024 raises OverflowError, while 1023 doublings take any base above 1e-299
# past any cap a configuration allows.
_MAX_EXPONENT = 1023


def ceiling(base: float, cap: float, failures: int) -> float:
    """The largest delay after ``failures`` failures in a row (``failures >= 1``)."""
    return min(cap, base * 2.0 ** min(max(failures, 1) - 1, _MAX_EXPONENT))


class Backoff:
    """The delays of one loop: full jitter under a doubling ceiling, reset on success.

    Args:
        base: Seconds of the first ceiling.
        cap: Largest ceiling, in seconds.
        rand: Returns a float in ``[0, 1]``; tests pass ``lambda: 1.0``.
    """

    __slots__ = ("_base", "_cap", "_rand", "failures")

    def __init__(
        self, base: float, cap: float, *, rand: Callable[[], float] = random.random
    ) -> None:
        if not 0 < base <= cap:
            raise ValueError(f"need 0 < base <= cap, got base={base}, cap={cap}")
        self._base = base
        self._cap = cap
        self._rand = rand
        #: Failures since the last ``reset``.
        self.failures = 0

    def next_delay(self) -> float:
        """Count one more failure and draw the delay before the next try."""
        self.failures += 1
        return self._rand() * ceiling(self._base, self._cap, self.failures)

    async def wait(self) -> float:
        """Count one more failure, sleep the drawn delay and return it."""
        delay = self.next_delay()
        await asyncio.sleep(delay)
        return delay

    def reset(self) -> None:
        """The loop succeeded: the next failure starts again from ``base``."""
        self.failures = 0
