"""Per-channel delivery settings: retry policy by severity, lease and deadline."""

import pytest
from pydantic import ValidationError

from dispatcher.delivery.config import CRITICAL_RETRY, ChannelDelivery
from dispatcher.events.kinds import Severity
from dispatcher.resilience.retry import RetryPolicy


def test_critical_deliveries_retry_sooner_and_longer_by_default() -> None:
    settings = ChannelDelivery()
    assert settings.policy_for(Severity.CRITICAL) == CRITICAL_RETRY
    assert settings.policy_for(Severity.LOW) == settings.retry
    assert CRITICAL_RETRY.max_delay < settings.retry.max_delay
    assert CRITICAL_RETRY.max_attempts > settings.retry.max_attempts


def test_policies_are_configurable_per_severity() -> None:
    high = RetryPolicy(max_attempts=3, base_delay=0.5, max_delay=5)
    settings = ChannelDelivery.model_validate(
        {"retry_by_severity": {"high": high.model_dump()}}
    )
    assert settings.policy_for(Severity.HIGH) == high
    assert (
        settings.policy_for(Severity.CRITICAL) == settings.retry
    )  # replaced, not merged


def test_the_lease_must_outlive_the_attempt_deadline() -> None:
    with pytest.raises(ValidationError, match="lease_seconds must be longer"):
        ChannelDelivery(lease_seconds=10, deadline_seconds=10)


def test_unknown_keys_are_refused() -> None:
    with pytest.raises(ValidationError):
        ChannelDelivery.model_validate({"retries": 3})
