"""The SMTP adapter against a real SMTP server (SmtpSink): delivery, reuse, faults, TLS."""

import asyncio
import email
import email.policy
import ssl
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
import trustme

from dispatcher.channels import classify
from dispatcher.channels.base import OutboundMessage
from dispatcher.channels.email_config import (
    EmailChannelConfig,
    SendLimits,
    SmtpProvider,
)
from dispatcher.channels.templates import SUBJECT_MAX_CHARS, EmailTemplate
from dispatcher.errors import (
    ErrorClass,
    PermanentDeliveryError,
    TransientDeliveryError,
)
from dispatcher.events.kinds import ChannelKind, Severity
from dispatcher.sinks.smtp import SmtpSink
from dispatcher.testing import make_message
from tests.channels import send_error
from tests.integration.conftest import MakeSmtpChannel
from tests.waiting import wait_for

CANARY = "canary-pii-7d2e@example.org"


def _message(**overrides: Any) -> OutboundMessage:
    return make_message(**{"recipient": CANARY, **overrides})


async def test_delivers_with_stable_message_id(
    smtp_sink: SmtpSink, make_smtp_channel: MakeSmtpChannel
) -> None:
    """The message arrives with Message-ID and id headers derived from the delivery."""
    templates = {
        "crisis.*": EmailTemplate(
            subject="Alert $subject_id", body="Score ${data.score}"
        )
    }
    channel = make_smtp_channel(smtp_sink.port, templates)
    message = _message()
    receipt = await channel.send(message)
    assert (channel.kind, channel.name) == (ChannelKind.EMAIL, "relay-a")
    assert receipt.provider == "relay-a"
    assert receipt.provider_code == "250"
    assert receipt.provider_message_id == "Q000001"
    [mail] = smtp_sink.received
    assert mail.message_id == f"<{message.delivery_id}@dispatcher>"
    assert mail.delivery_id == str(message.delivery_id)
    assert mail.event_id == str(message.event_id)
    assert mail.rcpt_count == 1
    assert mail.subject == "Alert person-42"
    assert b"Score 0.97" in mail.content


async def test_non_ascii_subject_and_body_arrive_intact(
    smtp_sink: SmtpSink, make_smtp_channel: MakeSmtpChannel
) -> None:
    """Unicode in data reaches the relay 7-bit clean and decodes to exactly the text."""
    templates = {
        "crisis.*": EmailTemplate(
            subject="Krise: ${data.name} ${data.note}", body="Notiz: ${data.note}"
        )
    }
    channel = make_smtp_channel(smtp_sink.port, templates)
    note = "Überprüfung nötig, 東京 " + "ö" * 120 + " \U0001f6a8"
    await channel.send(_message(data={"name": "Zoë", "note": note}))
    [mail] = smtp_sink.received
    assert mail.content.isascii()
    parsed = email.message_from_bytes(mail.content, policy=email.policy.strict)
    assert isinstance(parsed, EmailMessage)
    assert parsed.defects == []
    assert parsed["Subject"] == f"Krise: Zoë {note}"[:SUBJECT_MAX_CHARS]
    assert parsed.get_content() == f"Notiz: {note}\n"


async def test_retry_keeps_message_id(
    smtp_sink: SmtpSink, make_smtp_channel: MakeSmtpChannel
) -> None:
    """A second attempt of the same delivery carries the same Message-ID."""
    channel = make_smtp_channel(smtp_sink.port)
    message = _message()
    await channel.send(message)
    await channel.send(_message(delivery_id=message.delivery_id, attempt=2))
    assert smtp_sink.received[0].message_id == smtp_sink.received[1].message_id


async def test_reuses_one_connection(
    smtp_sink: SmtpSink, make_smtp_channel: MakeSmtpChannel
) -> None:
    """Sequential sends share one SMTP connection."""
    channel = make_smtp_channel(smtp_sink.port)
    for _ in range(10):
        await channel.send(_message())
    assert len(smtp_sink.received) == 10
    assert smtp_sink.connections == 1
    assert channel.connections_opened == 1


async def test_pool_bounds_concurrent_connections(
    smtp_sink: SmtpSink, make_smtp_channel: MakeSmtpChannel
) -> None:
    """Concurrent sends open at most pool_size connections and all arrive."""
    channel = make_smtp_channel(smtp_sink.port, pool_size=3)
    await asyncio.gather(*(channel.send(_message()) for _ in range(30)))
    assert len(smtp_sink.received) == 30
    assert 1 <= smtp_sink.connections <= 3


async def test_451_is_transient_and_connection_survives(
    smtp_sink: SmtpSink, make_smtp_channel: MakeSmtpChannel
) -> None:
    """A 4xx reply is provider_transient; the connection stays in the pool."""
    channel = make_smtp_channel(smtp_sink.port)
    smtp_sink.fail(451, times=1)
    error = await send_error(channel, _message())
    assert isinstance(error, TransientDeliveryError)
    assert (error.error_class, error.provider_code) == (
        ErrorClass.PROVIDER_TRANSIENT,
        "451",
    )
    await channel.send(_message())
    assert len(smtp_sink.received) == 1
    assert smtp_sink.connections == 1


@pytest.mark.parametrize("stage", ["rcpt", "data"])
async def test_550_is_permanent(
    smtp_sink: SmtpSink, make_smtp_channel: MakeSmtpChannel, stage: Any
) -> None:
    """A 5xx reply is permanent, and the relay's text (which quotes the address) is dropped."""
    channel = make_smtp_channel(smtp_sink.port)
    smtp_sink.fail(550, stage=stage, text=f"5.1.1 <{CANARY}> unknown user")
    error = await send_error(channel, _message())
    assert isinstance(error, PermanentDeliveryError)
    assert (error.error_class, error.provider_code) == (
        ErrorClass.PROVIDER_PERMANENT,
        "550",
    )
    assert error.__cause__ is None
    assert smtp_sink.received == []


async def test_down_is_connection_transient(
    smtp_sink: SmtpSink, make_smtp_channel: MakeSmtpChannel
) -> None:
    """A relay that refuses connections is a transient connection error, then recovers."""
    channel = make_smtp_channel(smtp_sink.port)
    await smtp_sink.go_down()
    error = await send_error(channel, _message())
    assert isinstance(error, TransientDeliveryError)
    assert error.error_class is ErrorClass.CONNECTION
    assert isinstance(error.__cause__, ConnectionError)
    await smtp_sink.come_up()
    await channel.send(_message())
    assert len(smtp_sink.received) == 1


async def test_relay_restart_costs_at_most_one_attempt(
    smtp_sink: SmtpSink, make_smtp_channel: MakeSmtpChannel
) -> None:
    """A pooled connection cut by the relay fails transiently once, then a new one is used."""
    channel = make_smtp_channel(smtp_sink.port)
    await channel.send(_message())
    await smtp_sink.go_down()
    await smtp_sink.come_up()
    outcomes = []
    for _ in range(2):
        try:
            await channel.send(_message())
            outcomes.append("ok")
        except TransientDeliveryError as exc:
            outcomes.append(exc.error_class)
    assert outcomes[-1] == "ok"
    assert outcomes[0] in {"ok", ErrorClass.CONNECTION}
    assert channel.connections_opened == 2


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


def _server_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    return context


def _ca_file(ca: trustme.CA, path: Path) -> Path:
    ca.cert_pem.write_to_path(str(path))
    return path


async def test_starttls_with_private_ca(
    ca: trustme.CA, tmp_path: Path, make_smtp_channel: MakeSmtpChannel
) -> None:
    """STARTTLS against a certificate from the configured private CA succeeds over TLS."""
    async with SmtpSink(
        tls_context=_server_context(ca), require_starttls=True
    ) as smtp_sink:
        channel = make_smtp_channel(
            smtp_sink.port, tls="starttls", ca_file=_ca_file(ca, tmp_path / "ca.pem")
        )
        await channel.send(_message())
        assert [mail.tls for mail in smtp_sink.received] == [True]


def test_credentials_need_tls() -> None:
    """Credentials are accepted only with TLS, and only as a pair."""
    fields: dict[str, Any] = {"name": "r", "host": "h", "from_address": "a@b.c"}
    with pytest.raises(ValueError, match="without TLS"):
        SmtpProvider(**fields, tls="none", username="u", password="p")
    with pytest.raises(ValueError, match="go together"):
        SmtpProvider(**fields, tls="tls", username="u")
    assert SmtpProvider(**fields, username="u", password="p").password is not None


async def test_wrong_ca_is_tls_transient_never_clear(
    tmp_path: Path, make_smtp_channel: MakeSmtpChannel
) -> None:
    """A certificate from another CA fails as tls; nothing is sent, even though the relay
    would accept plain text."""
    server_ca, other_ca = trustme.CA(), trustme.CA()
    async with SmtpSink(
        tls_context=_server_context(server_ca), require_starttls=False
    ) as smtp_sink:
        channel = make_smtp_channel(
            smtp_sink.port,
            tls="starttls",
            ca_file=_ca_file(other_ca, tmp_path / "other.pem"),
        )
        error = await send_error(channel, _message())
        assert isinstance(error, TransientDeliveryError)
        assert error.error_class is ErrorClass.TLS
        assert smtp_sink.received == []
        assert smtp_sink.attempts == 0


async def test_starttls_missing_is_not_sent_in_clear(
    smtp_sink: SmtpSink,
    make_smtp_channel: MakeSmtpChannel,
    tmp_path: Path,
    ca: trustme.CA,
) -> None:
    """A relay that does not offer STARTTLS gets nothing; the channel is not_configured."""
    channel = make_smtp_channel(
        smtp_sink.port, tls="starttls", ca_file=_ca_file(ca, tmp_path / "ca.pem")
    )
    error = await send_error(channel, _message())
    assert isinstance(error, TransientDeliveryError)
    assert error.error_class is ErrorClass.NOT_CONFIGURED
    assert smtp_sink.attempts == 0


async def test_hanging_data_cut_by_deadline_then_pool_recovers(
    smtp_sink: SmtpSink, make_smtp_channel: MakeSmtpChannel
) -> None:
    """A relay that stalls in DATA is cut by the overall deadline; the next send gets a
    fresh connection and succeeds."""
    channel = make_smtp_channel(smtp_sink.port, timeout=30.0)
    await channel.send(_message())
    smtp_sink.data_delay = 60.0
    with pytest.raises(TimeoutError) as caught:
        async with asyncio.timeout(0.3):
            await channel.send(_message())
    assert classify.exception(caught.value).error_class is ErrorClass.TIMEOUT
    smtp_sink.heal()
    await channel.send(_message())
    assert len(smtp_sink.received) == 2
    assert channel.connections_opened == 2


def _low(**overrides: Any) -> OutboundMessage:
    return _message(severity=Severity.LOW, **overrides)


async def _received(smtp_sink: SmtpSink, count: int) -> None:
    await wait_for(
        lambda: len(smtp_sink.received) >= count,
        f"{count} messages at the sink",
        timeout=10,
    )


async def test_critical_send_takes_the_reserved_connection_at_once(
    smtp_sink: SmtpSink, make_smtp_channel: MakeSmtpChannel
) -> None:
    """While low-severity sends hold every other pooled connection and more wait, a
    critical send gets the reserved one at once and reaches the relay first."""
    channel = make_smtp_channel(smtp_sink.port, pool_size=3, pool_critical_reserve=1)
    smtp_sink.reply_delay = 1.0
    lows = [asyncio.create_task(channel.send(_low())) for _ in range(6)]
    await _received(smtp_sink, 2)
    critical = _message()
    await channel.send(critical)
    assert smtp_sink.received[2].delivery_id == str(critical.delivery_id)
    await asyncio.gather(*lows)
    assert len(smtp_sink.received) == 7
    assert smtp_sink.connections == channel.connections_opened == 3


async def test_low_severity_never_takes_the_reserved_connection(
    smtp_sink: SmtpSink, make_smtp_channel: MakeSmtpChannel
) -> None:
    """Low-severity sends share the connections outside the reserve, one at a time here."""
    channel = make_smtp_channel(smtp_sink.port, pool_size=2, pool_critical_reserve=1)
    smtp_sink.reply_delay = 0.2
    await asyncio.gather(*(channel.send(_low()) for _ in range(3)))
    assert len(smtp_sink.received) == 3
    assert smtp_sink.connections == channel.connections_opened == 1


async def test_critical_send_waiting_for_a_connection_goes_first(
    smtp_sink: SmtpSink, make_smtp_channel: MakeSmtpChannel
) -> None:
    """With no reserve (or the reserve in use) a critical send still waits, but it takes
    the next connection freed, ahead of low-severity sends that were waiting before it."""
    channel = make_smtp_channel(smtp_sink.port, pool_size=2, pool_critical_reserve=0)
    smtp_sink.reply_delay = 0.5
    lows = [asyncio.create_task(channel.send(_low())) for _ in range(6)]
    await _received(smtp_sink, 2)
    critical = _message()
    await channel.send(critical)
    await asyncio.gather(*lows)
    order = [mail.delivery_id for mail in smtp_sink.received]
    assert str(critical.delivery_id) in order[2:4]


async def test_no_connection_free_in_time_is_busy_and_nothing_is_sent(
    smtp_sink: SmtpSink, make_smtp_channel: MakeSmtpChannel
) -> None:
    """A send that cannot get a pooled connection within connection_wait is busy: the
    relay never sees it, and the connection in use is unharmed."""
    channel = make_smtp_channel(
        smtp_sink.port, pool_size=1, limits=SendLimits(connection_wait=0.2)
    )
    smtp_sink.reply_delay = 1.0
    first = asyncio.create_task(channel.send(_message()))
    await _received(smtp_sink, 1)
    error = await send_error(channel, _message())
    assert isinstance(error, TransientDeliveryError)
    assert error.error_class is ErrorClass.BUSY
    await first
    assert (len(smtp_sink.received), smtp_sink.attempts) == (1, 1)
    assert channel.connections_opened == 1


async def test_send_deadline_starts_when_a_connection_is_lent(
    smtp_sink: SmtpSink, make_smtp_channel: MakeSmtpChannel
) -> None:
    """Waiting for a connection does not count against the send's deadline: a send that
    waited longer than the deadline for its connection is still delivered."""
    channel = make_smtp_channel(
        smtp_sink.port,
        pool_size=1,
        limits=SendLimits(connection_wait=5.0, deadline=0.6, final_reply=5.0),
    )
    smtp_sink.reply_delay = 0.4
    await asyncio.gather(*(channel.send(_message()) for _ in range(3)))
    assert len(smtp_sink.received) == 3


async def test_non_ascii_address_goes_with_smtputf8(
    make_smtp_channel: MakeSmtpChannel,
) -> None:
    """An address with non-ASCII characters is sent with SMTPUTF8 where the relay offers
    it; a relay without it gets nothing, and the provider is not_configured."""
    recipient = "zoë@example.org"
    async with SmtpSink(smtputf8=True) as utf8, SmtpSink() as plain:
        await make_smtp_channel(utf8.port).send(_message(recipient=recipient))
        [mail] = utf8.received
        assert mail.rcpt_tos == (recipient,)
        assert "SMTPUTF8" in mail.mail_options
        with pytest.raises(TransientDeliveryError) as caught:
            await make_smtp_channel(plain.port).send(_message(recipient=recipient))
        assert caught.value.error_class is ErrorClass.NOT_CONFIGURED
        assert plain.attempts == 0


async def test_silent_relay_hits_operation_timeout(
    smtp_sink: SmtpSink, make_smtp_channel: MakeSmtpChannel
) -> None:
    """A relay that accepts TCP but never greets fails with timeout after one operation
    timeout."""
    channel = make_smtp_channel(smtp_sink.port, timeout=0.3)
    smtp_sink.hang_on_connect = True
    async with asyncio.timeout(5):
        error = await send_error(channel, _message())
    assert isinstance(error, TransientDeliveryError)
    assert error.error_class is ErrorClass.TIMEOUT
    smtp_sink.heal()
    await channel.send(_message())
    assert len(smtp_sink.received) == 1


async def test_template_error_is_permanent(
    smtp_sink: SmtpSink, make_smtp_channel: MakeSmtpChannel
) -> None:
    """A template naming a missing data field fails the delivery as template, before any
    connection."""
    templates = {"crisis.*": EmailTemplate(subject="x", body="${data.missing}")}
    channel = make_smtp_channel(smtp_sink.port, templates)
    error = await send_error(channel, _message())
    assert isinstance(error, PermanentDeliveryError)
    assert error.error_class is ErrorClass.TEMPLATE
    assert smtp_sink.connections == 0


async def test_bad_recipient_is_invalid_recipient(
    smtp_sink: SmtpSink, make_smtp_channel: MakeSmtpChannel
) -> None:
    """An address with a line break is refused before the wire, as invalid_recipient."""
    channel = make_smtp_channel(smtp_sink.port)
    error = await send_error(
        channel, _message(recipient="x@example.org\r\nRCPT TO:<y@example.org>")
    )
    assert isinstance(error, PermanentDeliveryError)
    assert error.error_class is ErrorClass.INVALID_RECIPIENT
    assert smtp_sink.attempts == 0


async def test_aclose_closes_pooled_connections(
    smtp_sink: SmtpSink, make_smtp_channel: MakeSmtpChannel
) -> None:
    """aclose says QUIT on pooled connections; the relay sees them closed."""
    channel = make_smtp_channel(smtp_sink.port)
    await channel.send(_message())
    assert smtp_sink.open_connections == 1
    await channel.aclose()
    await wait_for(
        lambda: smtp_sink.open_connections == 0, "the relay to see the connection close"
    )


def test_config_validation() -> None:
    """Enabled without providers, or duplicate provider names, is a config error."""
    provider = {"name": "a", "host": "h", "from_address": "a@b.c"}
    with pytest.raises(ValueError, match="no providers"):
        EmailChannelConfig(enabled=True)
    with pytest.raises(ValueError, match="unique"):
        EmailChannelConfig(providers=[provider, provider])
    config = EmailChannelConfig(enabled=True, providers=[provider])
    assert (config.concurrency, config.deadline_seconds) == (16, 30.0)
    [relay] = config.providers
    assert (relay.pool_size, relay.pool_critical_reserve) == (5, 1)
