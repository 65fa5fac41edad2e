"""Resilience settings per channel: retry policy (per severity), breaker, lease, polling."""

from typing import ClassVar, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from dispatcher.events.kinds import Severity
from dispatcher.resilience.breaker import BreakerSettings
from dispatcher.resilience.retry import RetryPolicy

_FROZEN = ConfigDict(frozen=True, extra="forbid")

#: A critical alert must not wait half an hour between tries: short delays, many tries.
CRITICAL_RETRY = RetryPolicy(
    max_attempts=30, base_delay=1.0, max_delay=30.0, max_age=6 * 3600.0
)


class ChannelDelivery(BaseModel):
    """How one channel's worker retries, breaks and leases."""

    model_config = _FROZEN
    #: The settings that add up to ``try_seconds()``, for error messages.
    try_settings: ClassVar[str] = "deadline_seconds"

    retry: RetryPolicy = RetryPolicy()
    #: Overrides of ``retry`` by event severity.
    retry_by_severity: dict[Severity, RetryPolicy] = Field(
        default_factory=lambda: {Severity.CRITICAL: CRITICAL_RETRY}
    )
    breaker: BreakerSettings = BreakerSettings()
    #: Attempts in flight at once on this channel (per replica).
    concurrency: int = Field(default=16, ge=1, le=1024)
    #: Slots of ``concurrency`` that only critical deliveries may take.
    critical_reserve: int = Field(default=2, ge=0)
    #: Attempts in flight to one recipient at once (webhooks: one endpoint); None: no cap.
    #: A hanging endpoint then holds only these slots, never the whole channel's.
    max_inflight_per_recipient: int | None = Field(default=None, ge=1)
    #: One overall deadline per provider try, whatever the protocol's per-phase timeouts.
    deadline_seconds: float = Field(default=30.0, gt=0, le=600)
    #: How long a claim holds a delivery; longer than every provider try of an attempt.
    lease_seconds: float = Field(default=120.0, gt=0, le=3600)
    #: Sweep interval: retries come due and lost notifications are caught up within it.
    poll_interval: float = Field(default=1.0, gt=0, le=60)

    @model_validator(mode="after")
    def _lease_outlives_attempt(self) -> Self:
        if self.lease_seconds <= self.try_seconds():
            msg = f"lease_seconds must be longer than {self.try_settings}"
            raise ValueError(msg)
        return self

    def try_seconds(self) -> float:
        """The longest one provider try can take: ``deadline_seconds``, unless the
        channel bounds phases of its own around it (email)."""
        return self.deadline_seconds

    def policy_for(self, severity: Severity) -> RetryPolicy:
        """The retry policy for deliveries of events of this severity."""
        return self.retry_by_severity.get(severity, self.retry)
