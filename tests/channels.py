"""What the channel adapter tests share: the Twilio test account, SMTP adapters built the
same way, adapters closed after the test, and the check on a failed send."""

import uuid
from typing import Any, TypeVar

import pytest

from dispatcher.channels.base import Channel, OutboundMessage
from dispatcher.channels.email import SmtpChannel
from dispatcher.channels.email_config import SendLimits, SmtpProvider
from dispatcher.channels.templates import EmailTemplate
from dispatcher.errors import DeliveryError

#: The account TwilioSink accepts; random, so a test can look for them in logs.
TWILIO_SID = "AC" + uuid.uuid4().hex
TWILIO_TOKEN = "tok_canary_" + uuid.uuid4().hex


C = TypeVar("C", bound=Channel)


class Closer:
    """``closer(channel)`` returns ``channel``; ``aclose`` closes every one it was given."""

    def __init__(self) -> None:
        self._opened: list[Channel] = []

    def __call__(self, channel: C) -> C:
        self._opened.append(channel)
        return channel

    async def aclose(self) -> None:
        for channel in self._opened:
            await channel.aclose()


def smtp_channel(
    port: int,
    templates: dict[str, EmailTemplate] | None = None,
    limits: SendLimits | None = None,
    **fields: Any,
) -> SmtpChannel:
    """An SMTP adapter for a relay on loopback ``port``, without TLS unless ``fields``
    say otherwise."""
    values: dict[str, Any] = {
        "name": "relay-a",
        "host": "127.0.0.1",
        "port": port,
        "tls": "none",
        "from_address": "alerts@dispatcher.example",
        "timeout": 2.0,
        **fields,
    }
    return SmtpChannel(SmtpProvider(**values), templates=templates, limits=limits)


async def send_error(
    channel: Channel, message: OutboundMessage, *, secret: str | None = None
) -> DeliveryError:
    """The DeliveryError that sending ``message`` raises, which must not quote ``secret``
    (by default the message's recipient)."""
    with pytest.raises(DeliveryError) as caught:
        await channel.send(message)
    assert (secret or message.recipient) not in str(caught.value)
    return caught.value
