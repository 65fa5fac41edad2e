"""Webhook channel configuration: what loading refuses, and the defaults."""

import base64

import pytest
from pydantic import ValidationError

from dispatcher.channels.config import ChannelsConfig
from dispatcher.channels.webhook_config import WebhookChannelConfig
from dispatcher.resilience.delivery_policy import ChannelDelivery

SECRET = "whsec_" + base64.b64encode(b"k" * 32).decode()
URL = "https://monitor.example.org/hook"


def test_defaults() -> None:
    """The channel is a ChannelDelivery with safe pool, deadline and read-cap defaults."""
    config = ChannelsConfig().webhook
    assert isinstance(config, ChannelDelivery)
    assert config.concurrency == 32
    assert config.deadline_seconds == 10
    assert config.max_response_bytes == 65_536
    assert config.allow_http is False
    assert config.allow_private_networks == []
    assert config.endpoints == {}


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"deadline_seconds": 200, "lease_seconds": 120}, "lease_seconds"),
        (
            {"endpoints": {"m": {"url": URL, "secrets": [SECRET], "timeout": 30}}},
            "endpoints.m.timeout",
        ),
        (
            {"endpoints": {"m": {"url": URL, "headers": {"Webhook-Signature": "x"}}}},
            "set by the channel",
        ),
        (
            {"endpoints": {"m": {"url": URL, "headers": {"X-A": "a\r\nX-B: b"}}}},
            "control character",
        ),
        ({"allowed_ports": [0]}, "allowed_ports"),
        ({"endpoints": {"m": {"url": "https://[::1"}}}, "endpoints.m.url"),
        ({"allow_private_networks": ["127.0.0.1/8"]}, "allow_private_networks"),
    ],
    ids=[
        "deadline-over-lease",
        "timeout-over-deadline",
        "reserved-header",
        "header-injection",
        "port-zero",
        "bad-url",
        "host-bits-cidr",
    ],
)
def test_invalid_values_are_refused(values: dict[str, object], message: str) -> None:
    """Each inconsistent or unsafe value fails loading with a message naming it."""
    with pytest.raises(ValidationError, match=message):
        WebhookChannelConfig.model_validate(values)


def test_event_types_default_to_everything() -> None:
    """Routing reads event_types per endpoint name; it defaults to every type."""
    config = WebhookChannelConfig.model_validate({"endpoints": {"m": {"url": URL}}})
    assert config.endpoints["m"].event_types == ["*"]
