"""Which providers may carry a message, in failover order, each behind its own breaker."""

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from dispatcher.channels.base import Channel
from dispatcher.resilience.breaker import BreakerState, CircuitBreaker


@dataclass(frozen=True, slots=True)
class Candidate:
    """One way to send a message: a provider and the breaker that guards it."""

    channel: Channel
    breaker: CircuitBreaker


class Providers(Protocol):
    """The providers of one channel, as the worker sees them."""

    def candidates(self, recipient: str) -> Sequence[Candidate]:
        """Providers to try for a message to this recipient, in order."""
        ...

    def blocked_recipients(self) -> list[str]:
        """Recipients not worth claiming now: their only breaker is open."""
        ...

    def all_open_until(self) -> float | None:
        """When every provider's breaker is open: the clock reading of the first probe."""
        ...

    def breakers(self) -> list[CircuitBreaker]:
        """Every breaker, for the status query."""
        ...

    async def aclose(self) -> None:
        """Close every provider's connections."""
        ...


def open_until(breaker: CircuitBreaker, now: float) -> float | None:
    """The clock reading at which an open breaker admits a probe; None when not open."""
    snap = breaker.snapshot()
    if (
        snap.state is BreakerState.OPEN
        and snap.retry_at is not None
        and snap.retry_at > now
    ):
        return snap.retry_at
    return None


class FailoverProviders:
    """Email and SMS: the same providers, in the same order, for every recipient."""

    def __init__(
        self,
        candidates: Sequence[Candidate],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._candidates = list(candidates)
        self._clock = clock

    def candidates(self, recipient: str) -> Sequence[Candidate]:  # noqa: ARG002
        return self._candidates

    def blocked_recipients(self) -> list[str]:
        return []

    def all_open_until(self) -> float | None:
        now = self._clock()
        times = [open_until(c.breaker, now) for c in self._candidates]
        if not times or any(t is None for t in times):
            return None
        return min(t for t in times if t is not None)

    def breakers(self) -> list[CircuitBreaker]:
        return [c.breaker for c in self._candidates]

    async def aclose(self) -> None:
        for candidate in self._candidates:
            await candidate.channel.aclose()


class EndpointProviders:
    """Webhooks: one channel, one breaker per endpoint (the recipient names the endpoint).

    While an endpoint's breaker is open its deliveries are not claimed at all, so they wait
    without burning attempts and without holding worker slots that other endpoints need.
    """

    def __init__(
        self,
        channel: Channel,
        breaker_for: Callable[[str], CircuitBreaker],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._channel = channel
        self._breaker_for = breaker_for
        self._breakers: dict[str, CircuitBreaker] = {}
        self._clock = clock

    def _breaker(self, endpoint: str) -> CircuitBreaker:
        breaker = self._breakers.get(endpoint)
        if breaker is None:
            breaker = self._breakers[endpoint] = self._breaker_for(endpoint)
        return breaker

    def candidates(self, recipient: str) -> Sequence[Candidate]:
        return [Candidate(self._channel, self._breaker(recipient))]

    def blocked_recipients(self) -> list[str]:
        now = self._clock()
        return [n for n, b in self._breakers.items() if open_until(b, now) is not None]

    def all_open_until(self) -> float | None:
        return None

    def breakers(self) -> list[CircuitBreaker]:
        return list(self._breakers.values())

    async def aclose(self) -> None:
        await self._channel.aclose()
