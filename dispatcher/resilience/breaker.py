"""A circuit breaker per provider: closed, open, half-open, driven by an injected clock.

The breaker only counts and decides; the delivery worker asks ``allow()`` before a send
and reports the outcome. Transitions are announced to ``on_transition`` hooks, which the
audit log, the metrics and the logs subscribe to.
"""

import contextlib
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from pydantic import BaseModel, ConfigDict, Field

# A hard bound on the sliding window: pruning by age alone would let a busy provider
# grow it without limit. Past it the oldest calls drop, so the rate covers the latest ones.
_MAX_WINDOW_CALLS = 4096


class BreakerSettings(BaseModel):
    """When a breaker opens, how long it stays open and how it closes again.

    Attributes:
        failure_threshold: Consecutive failures that open the breaker.
        failure_rate: Failure ratio in the window that opens it, in ``(0, 1]``.
        window: Length of the sliding window, in seconds.
        min_calls: Calls the window must hold before ``failure_rate`` is considered.
        open_seconds: Seconds an open breaker refuses calls before it admits a probe.
        half_open_probes: Probes allowed in flight at once while half-open.
        close_after: Consecutive probe successes that close the breaker.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    failure_threshold: int = Field(default=5, ge=1)
    failure_rate: float = Field(default=0.5, gt=0, le=1)
    window: float = Field(default=60.0, gt=0, allow_inf_nan=False)
    min_calls: int = Field(default=10, ge=1)
    open_seconds: float = Field(default=30.0, gt=0, allow_inf_nan=False)
    half_open_probes: int = Field(default=1, ge=1)
    close_after: int = Field(default=1, ge=1)


class BreakerState(StrEnum):
    """The state of a circuit breaker."""

    #: Calls flow; failures are counted.
    CLOSED = "closed"
    #: Calls are refused until ``open_seconds`` have passed.
    OPEN = "open"
    #: A few probe calls test whether the provider has recovered.
    HALF_OPEN = "half_open"


class TransitionReason(StrEnum):
    """Why a breaker changed state; passed to every ``TransitionHook``."""

    #: ``failure_threshold`` consecutive failures (closed -> open).
    CONSECUTIVE_FAILURES = "consecutive_failures"
    #: The failure ratio in the window reached ``failure_rate`` (closed -> open).
    FAILURE_RATE = "failure_rate"
    #: ``open_seconds`` passed and a probe was admitted (open -> half_open).
    OPEN_TIMEOUT = "open_timeout"
    #: A probe failed (half_open -> open).
    PROBE_FAILED = "probe_failed"
    #: ``close_after`` probes in a row succeeded (half_open -> closed).
    PROBES_SUCCEEDED = "probes_succeeded"


class TransitionHook(Protocol):
    """Called after every state change of a breaker, with the breaker already in ``new``."""

    def __call__(
        self, name: str, old: BreakerState, new: BreakerState, reason: str
    ) -> None: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class BreakerSnapshot:
    """A breaker's counters at one instant, for a status API.

    ``opened_at`` and ``retry_at`` are readings of the breaker's clock (monotonic by
    default), not wall-clock times.
    """

    name: str
    state: BreakerState
    consecutive_failures: int
    calls_in_window: int
    failures_in_window: int
    opened_at: float | None
    retry_at: float | None


class CircuitBreaker:
    """Closed, open and half-open, with a sliding failure window and an injected clock.

    Not thread-safe: it is meant for one asyncio event loop, where no ``await`` falls
    between ``allow()`` and the bookkeeping it does.

    While half-open, any result reported settles one admitted probe: the breaker cannot
    tell a probe from a call admitted before it opened that reports late. A result with
    no probe in flight is ignored, as is any result reported while open.
    """

    def __init__(
        self,
        name: str,
        settings: BreakerSettings,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_transition: Sequence[TransitionHook] = (),
    ) -> None:
        """Create a closed breaker.

        Args:
            name: The provider's name, passed to hooks and shown in snapshots.
            settings: Thresholds and timings.
            clock: Returns seconds from any fixed origin; it must never go backwards.
            on_transition: Hooks called after every state change, in order.
        """
        self.name = name
        self.settings = settings
        self._clock = clock
        self._hooks = tuple(on_transition)
        self._state = BreakerState.CLOSED
        self._consecutive_failures = 0
        self._window: deque[tuple[float, bool]] = deque()
        self._window_failures = 0
        self._opened_at = 0.0  # meaningful only while open or half-open
        self._probes_in_flight = 0
        self._probe_successes = 0

    @property
    def state(self) -> BreakerState:
        """The current state, without side effects.

        An open breaker whose ``open_seconds`` have passed still reads as open: it moves
        to half-open (and tells its hooks) only when ``allow()`` admits the probe, so
        that reading the status never changes it. ``snapshot().retry_at`` says when a
        probe becomes due.
        """
        return self._state

    def allow(self) -> bool:
        """Ask whether a call may be made now.

        Each ``True`` must be followed by exactly one of ``record_success()``,
        ``record_failure()`` or ``release()``.

        Returns:
            ``True`` when closed, or when half-open with a free probe slot, which the
            call then takes. An open breaker past ``open_seconds`` turns half-open and
            admits this call as a probe. ``False`` otherwise.
        """
        if self._state is BreakerState.CLOSED:
            return True
        if self._state is BreakerState.OPEN:
            if self._clock() - self._opened_at < self.settings.open_seconds:
                return False
            self._transition(BreakerState.HALF_OPEN, TransitionReason.OPEN_TIMEOUT)
        if self._probes_in_flight >= self.settings.half_open_probes:
            return False
        self._probes_in_flight += 1
        return True

    def record_success(self) -> None:
        """Report that an admitted call succeeded."""
        if self._state is BreakerState.CLOSED:
            self._consecutive_failures = 0
            self._record(ok=True)
        elif self._state is BreakerState.HALF_OPEN and self._probes_in_flight:
            self._probes_in_flight -= 1
            self._probe_successes += 1
            if self._probe_successes >= self.settings.close_after:
                self._transition(BreakerState.CLOSED, TransitionReason.PROBES_SUCCEEDED)

    def record_failure(self) -> None:
        """Report that an admitted call failed in a way that counts against the provider."""
        if self._state is BreakerState.CLOSED:
            self._consecutive_failures += 1
            self._record(ok=False)
            calls = len(self._window)
            if self._consecutive_failures >= self.settings.failure_threshold:
                self._transition(
                    BreakerState.OPEN, TransitionReason.CONSECUTIVE_FAILURES
                )
            elif (
                calls >= self.settings.min_calls
                and self._window_failures / calls >= self.settings.failure_rate
            ):
                self._transition(BreakerState.OPEN, TransitionReason.FAILURE_RATE)
        elif self._state is BreakerState.HALF_OPEN and self._probes_in_flight:
            self._transition(BreakerState.OPEN, TransitionReason.PROBE_FAILED)

    def release(self) -> None:
        """Return the slot of an admitted call that was not made, without counting it."""
        if self._state is BreakerState.HALF_OPEN and self._probes_in_flight:
            self._probes_in_flight -= 1

    def snapshot(self) -> BreakerSnapshot:
        """Return the breaker's state and counters, with the window pruned to now."""
        self._prune(self._clock())
        closed = self._state is BreakerState.CLOSED
        is_open = self._state is BreakerState.OPEN
        return BreakerSnapshot(
            name=self.name,
            state=self._state,
            consecutive_failures=self._consecutive_failures,
            calls_in_window=len(self._window),
            failures_in_window=self._window_failures,
            opened_at=None if closed else self._opened_at,
            retry_at=self._opened_at + self.settings.open_seconds if is_open else None,
        )

    def _record(self, *, ok: bool) -> None:
        now = self._clock()
        self._prune(now)
        if len(self._window) >= max(_MAX_WINDOW_CALLS, self.settings.min_calls):
            self._drop_oldest()
        self._window.append((now, ok))
        self._window_failures += int(not ok)

    def _prune(self, now: float) -> None:
        horizon = now - self.settings.window
        while self._window and self._window[0][0] <= horizon:
            self._drop_oldest()

    def _drop_oldest(self) -> None:
        _, ok = self._window.popleft()
        self._window_failures -= int(not ok)

    def _transition(self, new: BreakerState, reason: TransitionReason) -> None:
        old, self._state = self._state, new
        self._probes_in_flight = 0
        self._probe_successes = 0
        if new is BreakerState.OPEN:
            self._opened_at = self._clock()
        elif new is BreakerState.CLOSED:
            self._consecutive_failures = 0
            self._window.clear()
            self._window_failures = 0
        for hook in self._hooks:
            # A broken subscriber must not break the breaker. Nothing is logged either:
            # the failing hook may well be the logger.
            with contextlib.suppress(Exception):
                hook(self.name, old, new, reason)
