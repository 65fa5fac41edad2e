"""When to try a failed delivery again, and when to give up: a pure decision.

``decide`` returns a value that the worker writes as the delivery's next attempt time (or
dead-letters it), so a retry survives restarts. Nothing here sleeps, reads a clock or draws
randomness of its own: ``now`` and ``rand`` are arguments.
"""

import math
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from enum import StrEnum
from typing import Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from dispatcher.resilience.backoff import ceiling

# Longer durations are configuration mistakes; the bound also keeps every RetryAt.at
# within datetime's range.
_LONGEST = 10 * 365 * 86400.0
_DELTA_SECONDS = re.compile(r"[0-9]+(?:\.[0-9]+)?")


class RetryPolicy(BaseModel):
    """Exponential backoff with full jitter, bounded by attempts and by age.

    Attributes:
        max_attempts: Attempts allowed in total, the first included.
        base_delay: Seconds of the first backoff ceiling, doubled after each attempt.
        max_delay: Largest backoff ceiling, in seconds.
        max_age: Seconds after the delivery's creation past which no retry is scheduled.
        retry_after_cap: Largest provider ``Retry-After`` honoured, in seconds.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_attempts: int = Field(default=8, ge=1)
    base_delay: float = Field(default=1.0, gt=0, le=_LONGEST, allow_inf_nan=False)
    max_delay: float = Field(default=300.0, gt=0, le=_LONGEST, allow_inf_nan=False)
    max_age: float = Field(default=86400.0, gt=0, le=_LONGEST, allow_inf_nan=False)
    retry_after_cap: float = Field(
        default=3600.0, ge=0, le=_LONGEST, allow_inf_nan=False
    )

    @model_validator(mode="after")
    def _check_relations(self) -> Self:
        if self.max_delay < self.base_delay:
            msg = f"max_delay ({self.max_delay}) must be >= base_delay ({self.base_delay})"
            raise ValueError(msg)
        return self


class DeadLetterReason(StrEnum):
    """Why ``decide`` gave up on a delivery."""

    #: The provider refused the message for good; retrying cannot help.
    PERMANENT_ERROR = "permanent_error"
    #: The policy's ``max_attempts`` have all been made.
    MAX_ATTEMPTS = "max_attempts"
    #: The next attempt would fall past ``created_at + max_age``.
    MAX_AGE = "max_age"


@dataclass(frozen=True, slots=True)
class RetryAt:
    """Try again at ``at``, which is ``delay`` seconds after the decision's ``now``."""

    at: datetime
    delay: float


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """Give up: the delivery goes to the dead-letter queue for ``reason``."""

    reason: DeadLetterReason


def decide(
    policy: RetryPolicy,
    *,
    attempts: int,
    created_at: datetime,
    now: datetime,
    permanent: bool,
    retry_after: float | None = None,
    rand: Callable[[], float] = random.random,
) -> RetryAt | DeadLetter:
    """Decide what happens to a delivery whose latest attempt has just failed.

    The delay is drawn with full jitter, ``rand() * min(max_delay, base_delay *
    2**(attempts - 1))``, and raised to the provider's ``Retry-After`` (capped at
    ``retry_after_cap``) when one was given: the provider's wish is a lower bound.

    Args:
        policy: The retry policy of the channel.
        attempts: Attempts made so far, the one that just failed included.
        created_at: When the delivery was created (timezone-aware).
        now: The current time (timezone-aware).
        permanent: Whether the failure was classified as permanent.
        retry_after: The provider's ``Retry-After`` in seconds, if any. Negative or NaN
            values are ignored.
        rand: Returns a float in ``[0, 1]``; tests pass ``lambda: 1.0``.

    Returns:
        ``RetryAt`` for the next attempt, or ``DeadLetter`` with the reason to give up.

    Raises:
        ValueError: ``attempts`` is below 1 or a datetime is naive.
    """
    if attempts < 1:
        raise ValueError(f"attempts must be >= 1, got {attempts}")
    if created_at.tzinfo is None or now.tzinfo is None:
        raise ValueError("created_at and now must be timezone-aware")
    if permanent:
        return DeadLetter(DeadLetterReason.PERMANENT_ERROR)
    if attempts >= policy.max_attempts:
        return DeadLetter(DeadLetterReason.MAX_ATTEMPTS)
    delay = rand() * ceiling(policy.base_delay, policy.max_delay, attempts)
    if retry_after is not None and retry_after > 0:
        delay = max(delay, min(retry_after, policy.retry_after_cap))
    # Compared in seconds rather than as datetimes, so that a large max_age cannot push
    # created_at + max_age past datetime.max.
    if (now - created_at).total_seconds() + delay > policy.max_age:
        return DeadLetter(DeadLetterReason.MAX_AGE)
    return RetryAt(at=now + timedelta(seconds=delay), delay=delay)


def parse_retry_after(value: str | None, *, now: datetime) -> float | None:
    """Read an HTTP ``Retry-After`` header value as seconds to wait.

    Accepts delta-seconds (``"120"``, also ``"1.5"``) and the HTTP-date formats of
    RFC 9110 (IMF-fixdate, and the obsolete RFC 850 and asctime forms, read as UTC).

    Args:
        value: The header value, or ``None`` when the header is absent.
        now: The current time (timezone-aware), for HTTP-dates.

    Returns:
        Seconds to wait, ``0.0`` for a date in the past, or ``None`` when the value is
        absent, negative, non-finite or not understood.
    """
    if value is None:
        return None
    text = value.strip()
    if _DELTA_SECONDS.fullmatch(text):
        seconds = float(text)
        return seconds if math.isfinite(seconds) else None
    try:
        when = parsedate_to_datetime(text)
    except (ValueError, TypeError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())
