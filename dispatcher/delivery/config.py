"""Resilience settings per channel: retry policy (per severity), breaker, lease, polling."""

from pydantic import BaseModel, ConfigDict, Field

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

    retry: RetryPolicy = RetryPolicy()
    #: Overrides of ``retry`` by event severity.
    retry_by_severity: dict[Severity, RetryPolicy] = Field(
        default_factory=lambda: {Severity.CRITICAL: CRITICAL_RETRY}
    )
    breaker: BreakerSettings = BreakerSettings()
    #: How long a claim holds a delivery; longer than the attempt deadline.
    lease_seconds: float = Field(default=120.0, gt=0, le=3600)
    #: Sweep interval: retries come due and lost notifications are caught up within it.
    poll_interval: float = Field(default=1.0, gt=0, le=60)

    def policy_for(self, severity: Severity) -> RetryPolicy:
        return self.retry_by_severity.get(severity, self.retry)


class DeliverySettings(BaseModel):
    """Per-channel delivery settings (``DISPATCHER_DELIVERY__EMAIL__RETRY__MAX_ATTEMPTS`` ...)."""

    model_config = _FROZEN

    email: ChannelDelivery = ChannelDelivery()
    sms: ChannelDelivery = ChannelDelivery()
    webhook: ChannelDelivery = ChannelDelivery()
