"""The SMTP adapter with RFC 2920 PIPELINING, against SmtpSink with and without it: the
same mail, the same classification and the same connection reuse either way (a message
handed over without a reply is indeterminate on both), and pipelining really used when
the relay offers it."""

import asyncio
import logging
import re
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import structlog
import trustme
import uvloop

from dispatcher.channels.email_config import SendLimits
from dispatcher.channels.templates import EmailTemplate
from dispatcher.errors import (
    DeliveryError,
    ErrorClass,
    PermanentDeliveryError,
    TransientDeliveryError,
)
from dispatcher.sinks.smtp import SmtpSink
from tests.channels import send_error, smtp_channel
from tests.integration.conftest import MakeSmtpChannel
from tests.integration.test_channel_email import CANARY, _message


@pytest.fixture(params=[True, False], ids=["pipelining", "no-pipelining"])
async def smtp_sink(request: pytest.FixtureRequest) -> AsyncIterator[SmtpSink]:
    async with SmtpSink(pipelining=request.param) as server:
        yield server


def _pipelined(smtp_sink: SmtpSink, count: int) -> int:
    """How many of ``count`` messages go pipelined."""
    return count if smtp_sink.pipelining else 0


async def test_pipelines_every_message(
    smtp_sink: SmtpSink, make_smtp_channel: MakeSmtpChannel
) -> None:
    """On a pooled connection, every message, the first (after EHLO) included, sends
    MAIL, RCPT and DATA in one write when the relay offers PIPELINING."""
    channel = make_smtp_channel(smtp_sink.port)
    receipts = [await channel.send(_message()) for _ in range(5)]
    assert [r.provider_message_id for r in receipts] == [
        f"Q{n:06d}" for n in range(1, 6)
    ]
    assert len(smtp_sink.received) == 5
    assert smtp_sink.pipelined == _pipelined(smtp_sink, 5)
    assert smtp_sink.connections == channel.connections_opened == 1


async def test_concurrent_sends_pipeline_on_every_pooled_connection(
    smtp_sink: SmtpSink, make_smtp_channel: MakeSmtpChannel
) -> None:
    """Concurrent sends over a pool of three all arrive, each pipelined."""
    channel = make_smtp_channel(smtp_sink.port, pool_size=3)
    await asyncio.gather(*(channel.send(_message()) for _ in range(30)))
    assert len(smtp_sink.received) == 30
    assert smtp_sink.pipelined == _pipelined(smtp_sink, 30)


def _without_date(content: bytes) -> bytes:
    return re.sub(rb"(?m)^Date: [^\r\n]*\r\n", b"", content)


async def test_same_mail_as_without_pipelining(
    make_smtp_channel: MakeSmtpChannel,
) -> None:
    """The same deliveries arrive byte for byte (but their Date) with the same envelope
    through a relay with PIPELINING and one without: 7-bit with leading dots, base64."""
    templates = {
        "crisis.*": EmailTemplate(
            subject="Alert ${data.note}", body=".\n.${data.note}\n..x\r\nend."
        )
    }
    messages = [
        _message(data={"note": "plain"}),
        _message(data={"note": "plain"}),
        _message(data={"note": "Überprüfung"}),
    ]
    async with SmtpSink(pipelining=False) as plain, SmtpSink() as pipe:
        for smtp_sink in (plain, pipe):
            channel = make_smtp_channel(smtp_sink.port, templates=templates)
            for message in messages:
                await channel.send(message)
        assert (plain.pipelined, pipe.pipelined) == (0, 3)
        assert b"\r\n..x\r\n" in plain.received[0].content
        for first, second in zip(plain.received, pipe.received, strict=True):
            assert _without_date(first.content) == _without_date(second.content)
            assert (first.mail_from, first.mail_options, first.rcpt_tos) == (
                second.mail_from,
                second.mail_options,
                second.rcpt_tos,
            )


async def test_leading_dots_survive(
    smtp_sink: SmtpSink, make_smtp_channel: MakeSmtpChannel
) -> None:
    """Body lines that start with a dot, a lone dot included, arrive unchanged."""
    body = "first\n.\n.leading\n..two\n. space\nlast"
    channel = make_smtp_channel(
        smtp_sink.port, templates={"crisis.*": EmailTemplate(subject="s", body=body)}
    )
    await channel.send(_message())
    await channel.send(_message())
    assert smtp_sink.pipelined == _pipelined(smtp_sink, 2)
    expected = body.replace("\n", "\r\n").encode() + b"\r\n"
    assert [mail.content.partition(b"\r\n\r\n")[2] for mail in smtp_sink.received] == [
        expected,
        expected,
    ]


REFUSALS = [
    pytest.param("mail", 550, PermanentDeliveryError, id="mail-550"),
    pytest.param("mail", 451, TransientDeliveryError, id="mail-451"),
    pytest.param("rcpt", 550, PermanentDeliveryError, id="rcpt-550"),
    pytest.param("rcpt", 450, TransientDeliveryError, id="rcpt-450"),
    pytest.param("data_command", 554, PermanentDeliveryError, id="data-554"),
    pytest.param("data", 451, TransientDeliveryError, id="dot-451"),
]


@pytest.mark.parametrize(("stage", "code", "kind"), REFUSALS)
async def test_refusal_classified_and_connection_reused(
    smtp_sink: SmtpSink,
    make_smtp_channel: MakeSmtpChannel,
    stage: Any,
    code: int,
    kind: type[DeliveryError],
) -> None:
    """A refused MAIL, RCPT, DATA or message is transient for 4xx and permanent for 5xx,
    without the relay's text; the same connection then delivers the next message."""
    channel = make_smtp_channel(smtp_sink.port)
    await channel.send(_message())
    smtp_sink.fail(code, stage=stage, times=1, text=f"<{CANARY}> refused")
    error = await send_error(channel, _message())
    assert type(error) is kind
    assert (error.error_class, error.provider_code) == (
        ErrorClass.PROVIDER_TRANSIENT
        if kind is TransientDeliveryError
        else ErrorClass.PROVIDER_PERMANENT,
        str(code),
    )
    assert error.__cause__ is None
    await channel.send(_message())
    assert len(smtp_sink.received) == 2
    assert smtp_sink.pipelined == _pipelined(smtp_sink, 3)
    assert smtp_sink.connections == channel.connections_opened == 1


async def test_421_is_transient_and_connection_replaced(
    smtp_sink: SmtpSink, make_smtp_channel: MakeSmtpChannel
) -> None:
    """A 421 (the relay closes the session) is transient, and the next message goes over
    a new connection."""
    channel = make_smtp_channel(smtp_sink.port)
    await channel.send(_message())
    smtp_sink.fail(421, stage="rcpt", times=1)
    error = await send_error(channel, _message())
    assert isinstance(error, TransientDeliveryError)
    assert error.provider_code == "421"
    await channel.send(_message())
    assert len(smtp_sink.received) == 2
    assert channel.connections_opened == 2
    assert smtp_sink.pipelined == _pipelined(smtp_sink, 3)


@pytest.mark.parametrize(
    ("stage", "error_class"),
    [
        ("rcpt", ErrorClass.CONNECTION),
        ("data_command", ErrorClass.CONNECTION),
        ("data", ErrorClass.INDETERMINATE),
    ],
)
async def test_cut_mid_transaction_is_transient_and_connection_discarded(
    smtp_sink: SmtpSink,
    make_smtp_channel: MakeSmtpChannel,
    stage: Any,
    error_class: ErrorClass,
) -> None:
    """The relay closing the connection mid-transaction is transient: a connection
    error before the final dot, indeterminate after it (the relay may have taken the
    message); the broken connection is dropped and the next message uses a new one."""
    channel = make_smtp_channel(smtp_sink.port)
    await channel.send(_message())
    smtp_sink.cut(stage)
    error = await send_error(channel, _message())
    assert isinstance(error, TransientDeliveryError)
    assert error.error_class is error_class
    await channel.send(_message())
    assert len(smtp_sink.received) == 2
    assert channel.connections_opened == 2
    assert smtp_sink.pipelined == _pipelined(smtp_sink, 3)


async def test_final_reply_waits_past_the_operation_timeout(
    smtp_sink: SmtpSink, make_smtp_channel: MakeSmtpChannel
) -> None:
    """The reply to the final dot has its own limit, longer than one SMTP operation's
    timeout and than the send's deadline: a relay that answers late still delivers."""
    channel = make_smtp_channel(
        smtp_sink.port, timeout=0.3, limits=SendLimits(deadline=0.5, final_reply=5.0)
    )
    smtp_sink.reply_delay = 1.0
    receipt = await channel.send(_message())
    assert receipt.provider_message_id == "Q000001"
    assert channel.connections_opened == 1


async def test_no_final_reply_in_time_is_indeterminate_and_connection_discarded(
    smtp_sink: SmtpSink, make_smtp_channel: MakeSmtpChannel
) -> None:
    """A reply to the final dot slower than its limit is indeterminate (the relay has
    the message here), retried no sooner than that limit; the connection is dropped."""
    channel = make_smtp_channel(smtp_sink.port, limits=SendLimits(final_reply=0.3))
    await channel.send(_message())
    smtp_sink.reply_delay = 5.0
    error = await send_error(channel, _message())
    assert isinstance(error, TransientDeliveryError)
    assert error.error_class is ErrorClass.INDETERMINATE
    assert error.retry_after == 0.3
    assert len(smtp_sink.received) == 2
    smtp_sink.heal()
    await channel.send(_message())
    assert channel.connections_opened == 2
    assert smtp_sink.pipelined == _pipelined(smtp_sink, 3)


async def test_deadline_mid_transaction_discards_connection(
    smtp_sink: SmtpSink, make_smtp_channel: MakeSmtpChannel
) -> None:
    """The attempt's deadline cancels a pipelined send; the pool closes that connection
    and the next send succeeds on a new one."""
    channel = make_smtp_channel(smtp_sink.port, timeout=30.0)
    await channel.send(_message())
    smtp_sink.data_delay = 60.0
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.3):
            await channel.send(_message())
    smtp_sink.heal()
    await channel.send(_message())
    assert len(smtp_sink.received) == 2
    assert channel.connections_opened == 2
    assert smtp_sink.pipelined == _pipelined(smtp_sink, 3)


async def test_no_address_in_logs(
    smtp_sink: SmtpSink,
    make_smtp_channel: MakeSmtpChannel,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Neither the adapter nor the sink logs the recipient, on success or on a refused
    pipelined send."""
    caplog.set_level(logging.DEBUG)
    channel = make_smtp_channel(smtp_sink.port)
    with structlog.testing.capture_logs() as logs:
        await channel.send(_message())
        smtp_sink.fail(550, stage="rcpt", times=1, text=f"<{CANARY}> unknown")
        await send_error(channel, _message())
        smtp_sink.fail(451, stage="data", times=1, text=f"<{CANARY}> later")
        await send_error(channel, _message())
    assert smtp_sink.pipelined == _pipelined(smtp_sink, 3)
    assert CANARY not in repr(logs)
    assert CANARY not in caplog.text


def _server_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    return context


async def _tls_and_faults(ca: trustme.CA, ca_file: Path) -> SmtpSink:
    """Over STARTTLS: three messages, a refused recipient, a cut connection, one more."""
    async with SmtpSink(
        tls_context=_server_context(ca), require_starttls=True
    ) as smtp_sink:
        channel = smtp_channel(smtp_sink.port, tls="starttls", ca_file=ca_file)
        try:
            for _ in range(3):
                await channel.send(_message())
            smtp_sink.fail(550, stage="rcpt", times=1)
            with pytest.raises(PermanentDeliveryError):
                await channel.send(_message())
            smtp_sink.cut("rcpt")
            with pytest.raises(TransientDeliveryError):
                await channel.send(_message())
            await channel.send(_message())
            assert channel.connections_opened == 2
        finally:
            await channel.aclose()
    return smtp_sink


@pytest.fixture
def ca_file(tmp_path: Path) -> tuple[trustme.CA, Path]:
    ca = trustme.CA()
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return ca, path


async def test_pipelines_over_starttls(ca_file: tuple[trustme.CA, Path]) -> None:
    """After STARTTLS (and the EHLO it needs), messages are pipelined inside TLS."""
    smtp_sink = await _tls_and_faults(*ca_file)
    assert [mail.tls for mail in smtp_sink.received] == [True] * 4
    assert smtp_sink.pipelined == 6


def test_pipelines_on_uvloop(ca_file: tuple[trustme.CA, Path]) -> None:
    """The same over STARTTLS on uvloop, the loop the dispatcher runs on, whose
    transports are not asyncio's."""
    smtp_sink = uvloop.run(_tls_and_faults(*ca_file))
    assert [mail.tls for mail in smtp_sink.received] == [True] * 4
    assert smtp_sink.pipelined == 6
