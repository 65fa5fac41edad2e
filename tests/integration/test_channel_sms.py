"""The Twilio adapter through the real twilio client against TwilioSink: delivery, faults."""

import asyncio
import logging
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from dispatcher.channels.base import OutboundMessage
from dispatcher.channels.sms import TwilioChannel, build_channels
from dispatcher.channels.sms_config import SmsChannelConfig, TwilioProvider
from dispatcher.errors import (
    ErrorClass,
    PermanentDeliveryError,
    TransientDeliveryError,
)
from dispatcher.events.kinds import ChannelKind
from dispatcher.sinks.twilio import TwilioSink
from dispatcher.testing import make_message
from tests.channels import TWILIO_SID, TWILIO_TOKEN, Closer, send_error
from tests.waiting import wait_for

CANARY = "+1555" + str(uuid.uuid4().int)[:7]
FROM = "+15550001111"

MakeChannel = Callable[..., TwilioChannel]


def _message(**overrides: Any) -> OutboundMessage:
    return make_message(**{"recipient": CANARY, **overrides})


@pytest.fixture
def make_channel(twilio_sink: TwilioSink, closing: Closer) -> MakeChannel:
    """Builds channels against the twilio_sink, closed after the test."""

    def make(template: str | None = None, **fields: Any) -> TwilioChannel:
        values: dict[str, Any] = {
            "name": "twilio-a",
            "account_sid": TWILIO_SID,
            "auth_token": TWILIO_TOKEN,
            "base_url": twilio_sink.base_url,
            "timeout": 2.0,
            **fields,
        }
        if "messaging_service_sid" not in values:
            values.setdefault("from_number", FROM)
        provider = TwilioProvider(**values)
        channel = (
            TwilioChannel(provider, template=template)
            if template
            else TwilioChannel(provider)
        )
        return closing(channel)

    return make


async def test_delivers_with_sid(
    twilio_sink: TwilioSink, make_channel: MakeChannel
) -> None:
    """The SMS reaches the account's Messages endpoint; the receipt carries its TWILIO_SID."""
    channel = make_channel(template="Alert ${data.score} for $subject_id")
    receipt = await channel.send(_message())
    assert (channel.kind, channel.name) == (ChannelKind.SMS, "twilio-a")
    [sms] = twilio_sink.received
    assert receipt.provider == "twilio-a"
    assert receipt.provider_message_id == sms.sid
    assert sms.sid.startswith("SM")
    assert len(sms.sid) == 34
    assert receipt.provider_code == "queued"
    assert (sms.to, sms.from_, sms.body) == (CANARY, FROM, "Alert 0.97 for person-42")


async def test_messaging_service(
    twilio_sink: TwilioSink, make_channel: MakeChannel
) -> None:
    """A provider with a messaging service sends through it, with no From number."""
    service = "MG" + uuid.uuid4().hex
    channel = make_channel(messaging_service_sid=service)
    receipt = await channel.send(_message())
    [sms] = twilio_sink.received
    assert (sms.messaging_service_sid, sms.from_) == (service, None)
    assert receipt.provider_code == "accepted"


async def test_form_fields_arrive_intact(
    twilio_sink: TwilioSink, make_channel: MakeChannel
) -> None:
    """Characters a form must escape (&, =, +, %, spaces, newlines, non-ASCII) reach
    Twilio unchanged in every field: the adapter encodes the form itself."""
    channel = make_channel(template="a&b=c+d 100% é ✓\n$subject_id")
    await channel.send(_message(recipient="+1555&To=+1", subject_id="ß=&+"))
    [sms] = twilio_sink.received
    assert (sms.to, sms.from_, sms.body) == (
        "+1555&To=+1",
        FROM,
        "a&b=c+d 100% é ✓\nß=&+",
    )


async def test_reuses_one_connection(
    twilio_sink: TwilioSink, make_channel: MakeChannel
) -> None:
    """Sequential sends share one kept-alive HTTP connection."""
    channel = make_channel()
    for _ in range(5):
        await channel.send(_message())
    assert len(twilio_sink.received) == 5
    assert twilio_sink.connections == 1


@pytest.mark.parametrize("code", [21211, 21614, 21610])
async def test_bad_number_is_permanent(
    twilio_sink: TwilioSink, make_channel: MakeChannel, code: int
) -> None:
    """Invalid, non-mobile and unsubscribed numbers are permanent; the text is dropped."""
    twilio_sink.fail(400, code)
    error = await send_error(make_channel(), _message())
    assert isinstance(error, PermanentDeliveryError)
    assert (error.error_class, error.provider_code) == (
        ErrorClass.PROVIDER_PERMANENT,
        str(code),
    )
    assert error.__cause__ is None


async def test_rate_limited_with_retry_after(
    twilio_sink: TwilioSink, make_channel: MakeChannel
) -> None:
    """20429 with Retry-After is transient rate_limited and carries the delay."""
    twilio_sink.fail(429, 20429, times=1, retry_after="7")
    channel = make_channel()
    error = await send_error(channel, _message())
    assert isinstance(error, TransientDeliveryError)
    assert (error.error_class, error.retry_after) == (ErrorClass.RATE_LIMITED, 7.0)
    await channel.send(_message())
    assert len(twilio_sink.received) == 1


async def test_retry_after_does_not_leak_between_sends(
    twilio_sink: TwilioSink, make_channel: MakeChannel
) -> None:
    """A Retry-After seen by one send is not applied to the next error."""
    channel = make_channel()
    twilio_sink.fail(429, 20429, times=1, retry_after="7")
    await send_error(channel, _message())
    twilio_sink.fail(429, 20429, times=1)
    error = await send_error(channel, _message())
    assert isinstance(error, TransientDeliveryError)
    assert error.retry_after is None


async def test_503_is_transient(
    twilio_sink: TwilioSink, make_channel: MakeChannel
) -> None:
    """A 503 without a Twilio body is provider_transient."""
    twilio_sink.fail(503)
    error = await send_error(make_channel(), _message())
    assert isinstance(error, TransientDeliveryError)
    assert (error.error_class, error.provider_code) == (
        ErrorClass.PROVIDER_TRANSIENT,
        "503",
    )


async def test_down_is_connection_transient(
    twilio_sink: TwilioSink, make_channel: MakeChannel
) -> None:
    """A refused connection is transient connection; the channel recovers."""
    channel = make_channel()
    await twilio_sink.go_down()
    error = await send_error(channel, _message())
    assert isinstance(error, TransientDeliveryError)
    assert error.error_class is ErrorClass.CONNECTION
    await twilio_sink.come_up()
    await channel.send(_message())
    assert len(twilio_sink.received) == 1


async def test_wrong_token_is_not_configured(
    twilio_sink: TwilioSink, make_channel: MakeChannel
) -> None:
    """Bad credentials (401/20003) are transient not_configured: breaker and failover,
    not the dead-letter queue."""
    error = await send_error(make_channel(auth_token="wrong"), _message())
    assert isinstance(error, TransientDeliveryError)
    assert (error.error_class, error.provider_code) == (
        ErrorClass.NOT_CONFIGURED,
        "20003",
    )
    assert twilio_sink.received == []


async def test_hang_is_cut_by_timeout(
    twilio_sink: TwilioSink, make_channel: MakeChannel
) -> None:
    """A server that never answers is cut at the provider timeout, as timeout."""
    channel = make_channel(timeout=0.3)
    twilio_sink.delay = 60.0
    async with asyncio.timeout(5):
        error = await send_error(channel, _message())
    assert isinstance(error, TransientDeliveryError)
    assert error.error_class is ErrorClass.TIMEOUT
    twilio_sink.heal()
    await channel.send(_message())
    assert len(twilio_sink.received) == 1


async def test_every_slot_gets_its_own_connection_at_once(
    twilio_sink: TwilioSink,
) -> None:
    """With more slots than aiohttp's default 100 connections, every send in flight has
    its own connection at once: none (a critical one least of all) waits in the HTTP
    client's queue behind slower sends."""
    slots = 120
    config = SmsChannelConfig(
        enabled=True,
        concurrency=slots,
        providers=[
            TwilioProvider(
                name="twilio-a",
                account_sid=TWILIO_SID,
                auth_token=TWILIO_TOKEN,
                from_number=FROM,
                base_url=twilio_sink.base_url,
                timeout=30.0,
            )
        ],
    )
    [channel] = build_channels(config)
    twilio_sink.delay = 60.0
    sends = [asyncio.create_task(channel.send(_message())) for _ in range(slots)]
    try:
        async with asyncio.timeout(10):
            while twilio_sink.requests < slots:
                await asyncio.sleep(0.02)
        assert twilio_sink.open_connections == slots
    finally:
        for send in sends:
            send.cancel()
        await asyncio.gather(*sends, return_exceptions=True)
        await channel.aclose()


async def test_template_error_is_permanent(
    twilio_sink: TwilioSink, make_channel: MakeChannel
) -> None:
    """A missing data field fails as template before any request."""
    error = await send_error(make_channel(template="${data.missing}"), _message())
    assert isinstance(error, PermanentDeliveryError)
    assert error.error_class is ErrorClass.TEMPLATE
    assert twilio_sink.requests == 0


async def test_aclose_closes_session(
    twilio_sink: TwilioSink, make_channel: MakeChannel
) -> None:
    """aclose closes the pooled HTTP session; the server sees the connection go."""
    channel = make_channel()
    await channel.send(_message())
    assert twilio_sink.open_connections == 1
    await channel.aclose()
    await wait_for(
        lambda: twilio_sink.open_connections == 0,
        "the server to see the connection close",
    )


async def test_no_number_token_or_sid_in_logs(
    twilio_sink: TwilioSink, make_channel: MakeChannel, caplog: pytest.LogCaptureFixture
) -> None:
    """Twilio's request logging stays below INFO: no number, token or account TWILIO_SID."""
    caplog.set_level(logging.DEBUG)
    channel = make_channel()
    await channel.send(_message())
    twilio_sink.fail(400, 21211, times=1)
    await send_error(channel, _message())
    for secret in (CANARY, TWILIO_TOKEN, TWILIO_SID):
        assert secret not in caplog.text


async def test_twilio_request_log_never_runs(
    twilio_sink: TwilioSink, make_channel: MakeChannel, caplog: pytest.LogCaptureFixture
) -> None:
    """Even with its logger at DEBUG, twilio's client logs no request or response."""
    caplog.set_level(logging.DEBUG, logger="dispatcher.channels.sms.http")
    channel = make_channel()
    await channel.send(_message())
    twilio_sink.fail(429, 20429, times=1, retry_after="7")
    await send_error(channel, _message())
    assert [r for r in caplog.records if r.name.startswith("dispatcher.channels")] == []


def test_provider_validation() -> None:
    """Exactly one sender; SIDs and numbers have Twilio's shapes."""
    base: dict[str, Any] = {
        "name": "t",
        "account_sid": TWILIO_SID,
        "auth_token": TWILIO_TOKEN,
    }
    with pytest.raises(ValueError, match="exactly one"):
        TwilioProvider(**base)
    with pytest.raises(ValueError, match="exactly one"):
        TwilioProvider(**base, from_number=FROM, messaging_service_sid="MG" + "0" * 32)
    with pytest.raises(ValueError, match="account_sid"):
        TwilioProvider(**{**base, "account_sid": "nope"}, from_number=FROM)
    with pytest.raises(ValueError, match="base_url"):
        TwilioProvider(**base, from_number=FROM, base_url="ftp://x")
    assert TWILIO_TOKEN not in repr(TwilioProvider(**base, from_number=FROM))


def test_config_validation() -> None:
    """Enabled without providers is a config error; defaults follow the brief."""
    with pytest.raises(ValueError, match="no providers"):
        SmsChannelConfig(enabled=True)
    config = SmsChannelConfig()
    assert (config.concurrency, config.deadline_seconds) == (16, 15.0)
