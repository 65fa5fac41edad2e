"""Per-channel delivery settings: retry policy by severity, lease and deadline."""

import pytest
from pydantic import ValidationError

from dispatcher.app import build_providers
from dispatcher.channels.email_config import EmailChannelConfig
from dispatcher.errors import ConfigError
from dispatcher.events.kinds import ChannelKind, Severity
from dispatcher.resilience.breaker import BreakerState
from dispatcher.resilience.delivery_policy import CRITICAL_RETRY, ChannelDelivery
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


def test_a_lease_shorter_than_a_full_failover_attempt_is_refused() -> None:
    """Failover tries every relay in one attempt: the lease must cover all their deadlines."""
    relays = [
        {
            "name": f"relay-{n}",
            "host": "127.0.0.1",
            "tls": "none",
            "from_address": "d@example.org",
        }
        for n in range(3)
    ]
    config = EmailChannelConfig(
        enabled=True,
        providers=relays,
        connection_wait_seconds=10,
        deadline_seconds=30,
        final_reply_seconds=60,
        lease_seconds=300,
    )

    def hook(name: str, old: BreakerState, new: BreakerState, reason: str) -> None: ...

    with pytest.raises(
        ConfigError,
        match=r"\(connection_wait_seconds \+ deadline_seconds \+ final_reply_seconds\)"
        " x 3 providers",
    ):
        build_providers(ChannelKind.EMAIL, config, hook)
    ok = config.model_copy(update={"lease_seconds": 301})
    assert len(build_providers(ChannelKind.EMAIL, ok, hook).breakers()) == 3


def test_an_email_lease_covers_the_connection_wait_and_the_final_reply() -> None:
    """An email try can wait for a connection, then send, then wait for the reply to
    the final dot: the lease must outlive all three, not only the send's deadline."""
    with pytest.raises(ValidationError, match="final_reply_seconds"):
        EmailChannelConfig(
            connection_wait_seconds=5,
            deadline_seconds=10,
            final_reply_seconds=100,
            lease_seconds=114,
        )
    config = EmailChannelConfig(
        connection_wait_seconds=5,
        deadline_seconds=10,
        final_reply_seconds=100,
        lease_seconds=116,
    )
    assert config.try_seconds() == 115
    assert config.limits().total == 115


def test_default_email_lease_covers_two_relays() -> None:
    """At the defaults an email try lasts at most 100 s, and the 240 s lease covers a
    primary and a backup relay."""
    config = EmailChannelConfig()
    assert (
        config.connection_wait_seconds,
        config.deadline_seconds,
        config.final_reply_seconds,
    ) == (10, 30, 60)
    assert config.lease_seconds > 2 * config.try_seconds()
