"""smtppipe.sendmail on the wire: against SmtpSink (aiosmtpd) with and without PIPELINING,
and against scripted peers for what aiosmtpd never does (split or malformed replies, 354
after a refused recipient, a 421, a reply to the final dot that comes late or never)."""

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiosmtplib
import pytest

from dispatcher.channels import smtppipe
from dispatcher.sinks.smtp import SmtpSink

SENDER = "alerts@dispatcher.example"
RECIPIENT = "canary-pii-7d2e@example.org"

Peer = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def _client(port: int, timeout: float = 2.0) -> AsyncIterator[aiosmtplib.SMTP]:
    """A connected client that has said EHLO, as a pooled connection after one send."""
    client = aiosmtplib.SMTP(
        hostname="127.0.0.1", port=port, timeout=timeout, start_tls=False
    )
    await client.connect()
    await client.ehlo()
    try:
        yield client
    finally:
        client.close()


@contextlib.asynccontextmanager
async def _scripted(peer: Peer, timeout: float = 2.0) -> AsyncIterator[aiosmtplib.SMTP]:
    """A raw TCP SMTP peer that greets, offers PIPELINING and SIZE, then runs ``peer``."""
    tasks: list[asyncio.Task[Any]] = []

    async def handle(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.append(task)
        try:
            writer.write(b"220 scripted ESMTP\r\n")
            await reader.readline()
            writer.write(b"250-scripted\r\n250-PIPELINING\r\n250 SIZE 1000000\r\n")
            await peer(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        async with _client(server.sockets[0].getsockname()[1], timeout) as client:
            assert client.supports_extension("pipelining")
            yield client
    finally:
        server.close()
        await server.wait_closed()
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 2)


async def _envelope(reader: asyncio.StreamReader) -> bytes:
    return await reader.readuntil(b"DATA\r\n")


async def test_sink_offers_pipelining_unless_told_not_to() -> None:
    """SmtpSink's EHLO reply holds PIPELINING by default and not with pipelining=False."""
    for pipelining in (True, False):
        async with (
            SmtpSink(pipelining=pipelining) as sink,
            _client(sink.port) as client,
        ):
            assert client.supports_extension("pipelining") is pipelining
            assert client.supports_extension("size")


async def test_sink_answers_a_pipelined_group_in_order() -> None:
    """aiosmtpd reads MAIL, RCPT and DATA sent in one write and answers each in turn."""
    async with SmtpSink() as sink:
        reader, writer = await asyncio.open_connection("127.0.0.1", sink.port)
        await reader.readline()
        writer.write(b"EHLO client.example\r\n")
        while (await reader.readline())[3:4] == b"-":
            pass
        writer.write(
            f"MAIL FROM:<{SENDER}>\r\nRCPT TO:<{RECIPIENT}>\r\nDATA\r\n".encode()
        )
        replies = [(await reader.readline())[:3] for _ in range(3)]
        writer.write(b"Subject: x\r\n\r\nbody\r\n.\r\n")
        replies.append((await reader.readline())[:3])
        writer.close()
    assert replies == [b"250", b"250", b"354", b"250"]
    assert sink.pipelined == 1
    assert [mail.rcpt_tos for mail in sink.received] == [(RECIPIENT,)]


MESSAGES = {
    "crlf": b"Subject: a\r\n\r\nbody\r\n",
    "no-final-line-end": b"Subject: a\r\n\r\nbody",
    "bare-lf-and-cr": b"Subject: a\n\nline one\nline two\rline three\r\n",
    "leading-dots": b"Subject: a\r\n\r\n.\r\n.hidden\r\n..two\r\n.\r\nafter\r\n",
    "dot-first-line": b".starts with a dot\r\n\r\nbody",
    "empty": b"",
    "8-bit": "Subject: a\r\n\r\nÜberprüfung\r\n".encode(),
}


@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelining", "lockstep"])
@pytest.mark.parametrize("name", MESSAGES)
async def test_same_bytes_and_envelope_as_sendmail(name: str, pipelining: bool) -> None:
    """Message and envelope arrive exactly as aiosmtplib's unpipelined sendmail sends
    them (line ends, dot-stuffing, SIZE), in one read only when pipelined."""
    message = MESSAGES[name]
    async with (
        SmtpSink(pipelining=False) as plain_sink,
        SmtpSink(pipelining=pipelining) as pipe_sink,
        _client(plain_sink.port) as plain,
        _client(pipe_sink.port) as pipe,
    ):
        _, plain_reply = await plain.sendmail(SENDER, [RECIPIENT], message)
        pipe_reply = await smtppipe.sendmail(pipe, SENDER, RECIPIENT, message)
    [expected], [got] = plain_sink.received, pipe_sink.received
    assert got.content == expected.content
    assert (got.mail_from, got.mail_options, got.rcpt_tos) == (
        expected.mail_from,
        expected.mail_options,
        expected.rcpt_tos,
    )
    assert got.mail_options == (f"SIZE={len(got.content)}",)
    assert pipe_reply == plain_reply == "2.0.0 OK: queued as Q000001"
    assert (pipe_sink.pipelined, plain_sink.pipelined) == (int(pipelining), 0)


FAULTS = [
    pytest.param("mail", 550, id="mail-550"),
    pytest.param("mail", 451, id="mail-451"),
    pytest.param("rcpt", 550, id="rcpt-550"),
    pytest.param("rcpt", 450, id="rcpt-450"),
    pytest.param("data_command", 554, id="data-554"),
    pytest.param("data", 451, id="dot-451"),
    pytest.param("data", 552, id="dot-552"),
]


def _shape(exc: BaseException) -> tuple[Any, ...]:
    """What the channel's classification and the pool look at, and nothing else."""
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        inner = [(type(r), r.code, r.recipient) for r in exc.recipients]
        return (type(exc), inner)
    assert isinstance(exc, aiosmtplib.SMTPResponseException)
    return (type(exc), exc.code, getattr(exc, "sender", None))


@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelining", "lockstep"])
@pytest.mark.parametrize(("stage", "code"), FAULTS)
async def test_refusals_raise_what_sendmail_raises(
    stage: Any, code: int, pipelining: bool
) -> None:
    """Each refusal raises aiosmtplib's exception for it, with the same code, and the
    connection then carries the next message."""
    async with (
        SmtpSink(pipelining=False) as plain_sink,
        SmtpSink(pipelining=pipelining) as pipe_sink,
        _client(plain_sink.port) as plain,
        _client(pipe_sink.port) as pipe,
    ):
        plain_sink.fail(code, stage=stage, times=1)
        pipe_sink.fail(code, stage=stage, times=1)
        with pytest.raises(aiosmtplib.SMTPException) as expected:
            await plain.sendmail(SENDER, [RECIPIENT], b"x")
        with pytest.raises(aiosmtplib.SMTPException) as got:
            await smtppipe.sendmail(pipe, SENDER, RECIPIENT, b"x")
        assert _shape(got.value) == _shape(expected.value)
        assert pipe.is_connected
        await smtppipe.sendmail(pipe, SENDER, RECIPIENT, b"next")
    assert [mail.content for mail in pipe_sink.received] == [b"next\r\n"]
    assert (pipe_sink.pipelined, pipe_sink.connections) == (2 * pipelining, 1)


async def test_replies_in_separate_packets() -> None:
    """Replies that arrive one by one, and a reply split across packets, are all read."""
    seen: list[bytes] = []

    async def peer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await _envelope(reader))
        for chunk in (
            b"250 sender ok\r\n",
            b"250-recipient\r\n",
            b"250 ok\r\n35",
            b"4 go\r\n",
        ):
            writer.write(chunk)
            await writer.drain()
            await asyncio.sleep(0.05)
        seen.append(await reader.readuntil(b"\r\n.\r\n"))
        writer.write(b"250-2.0.0 Ok\r\n250 queued as ABC\r\n")
        await reader.read()

    async with _scripted(peer) as client:
        reply = await smtppipe.sendmail(client, SENDER, RECIPIENT, b"body")
        assert client.is_connected
    assert reply == "2.0.0 Ok\nqueued as ABC"
    assert seen == [
        f"MAIL FROM:<{SENDER}> size=6\r\nRCPT TO:<{RECIPIENT}>\r\nDATA\r\n".encode(),
        b"body\r\n.\r\n",
    ]


async def test_every_reply_is_read_before_the_next_command() -> None:
    """After a refused MAIL, RSET waits for the replies to RCPT and DATA: sent earlier,
    it would be answered by one of them."""
    seen: list[bytes] = []

    async def peer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _envelope(reader)
        writer.write(b"550 5.7.1 sender refused\r\n")
        with contextlib.suppress(TimeoutError):
            seen.append(b"early " + await asyncio.wait_for(reader.readline(), 0.2))
        writer.write(b"503 5.5.1 need MAIL\r\n503 5.5.1 need RCPT\r\n")
        seen.append(await reader.readline())
        writer.write(b"250 2.0.0 reset\r\n")
        await _envelope(reader)
        writer.write(b"250 ok\r\n250 ok\r\n354 go\r\n")
        await reader.readuntil(b"\r\n.\r\n")
        writer.write(b"250 queued as SECOND\r\n")
        await reader.read()

    async with _scripted(peer) as client:
        with pytest.raises(aiosmtplib.SMTPSenderRefused) as caught:
            await smtppipe.sendmail(client, SENDER, RECIPIENT, b"body")
        assert caught.value.code == 550
        assert await smtppipe.sendmail(client, SENDER, RECIPIENT, b"next") == (
            "queued as SECOND"
        )
    assert seen == [b"RSET\r\n"]


async def test_accepted_data_after_refused_recipient_gets_a_lone_dot() -> None:
    """RFC 2920 3.1: a 354 despite a refused RCPT is ended with ".", then RSET follows."""
    seen: list[bytes] = []

    async def peer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _envelope(reader)
        writer.write(b"250 ok\r\n550 5.1.1 no such user\r\n354 go ahead\r\n")
        seen.append(await reader.readline())
        writer.write(b"554 no valid recipients\r\n")
        seen.append(await reader.readline())
        writer.write(b"250 reset\r\n")
        await reader.read()

    async with _scripted(peer) as client:
        with pytest.raises(aiosmtplib.SMTPRecipientsRefused) as caught:
            await smtppipe.sendmail(client, SENDER, RECIPIENT, b"body")
        assert client.is_connected
    assert [r.code for r in caught.value.recipients] == [550]
    assert seen == [b".\r\n", b"RSET\r\n"]


async def test_421_closes_without_waiting_for_more_replies() -> None:
    """A 421 (the relay is closing) ends the transaction at once and closes the client."""

    async def peer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _envelope(reader)
        writer.write(b"421 4.3.2 shutting down\r\n")
        await reader.read()

    async with _scripted(peer, timeout=5.0) as client:
        with pytest.raises(aiosmtplib.SMTPSenderRefused) as caught:
            async with asyncio.timeout(1):
                await smtppipe.sendmail(client, SENDER, RECIPIENT, b"body")
        assert caught.value.code == 421
        assert not client.is_connected


@pytest.mark.parametrize(
    "replies",
    [b"250 ok\r\nnonsense\r\n", b"250 ok\r\n"],
    ids=["malformed", "silent"],
)
async def test_broken_replies_close_the_client(replies: bytes) -> None:
    """A malformed reply, or none within the timeout, fails as aiosmtplib fails (code -1,
    read timeout) and closes the client: a later command could get a stale reply."""

    async def peer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _envelope(reader)
        writer.write(replies)
        await reader.read()

    async with _scripted(peer, timeout=0.3) as client:
        with pytest.raises(aiosmtplib.SMTPException) as caught:
            await smtppipe.sendmail(client, SENDER, RECIPIENT, b"body")
        assert not client.is_connected
    if replies.endswith(b"nonsense\r\n"):
        assert isinstance(caught.value, aiosmtplib.SMTPResponseException)
        assert caught.value.code == -1
    else:
        assert isinstance(caught.value, aiosmtplib.SMTPReadTimeoutError)


async def test_disconnect_mid_group_is_server_disconnected() -> None:
    """The relay closing after the MAIL reply fails as a lost connection, client closed."""

    async def peer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _envelope(reader)
        writer.write(b"250 ok\r\n")
        await writer.drain()

    async with _scripted(peer) as client:
        with pytest.raises(aiosmtplib.SMTPServerDisconnected):
            await smtppipe.sendmail(client, SENDER, RECIPIENT, b"body")
        assert not client.is_connected


async def test_cancellation_hands_the_transport_back() -> None:
    """Cancelled mid-transaction (the attempt's deadline), the transport is aiosmtplib's
    again, so closing the client still works as it should."""

    async def peer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _envelope(reader)
        await reader.read()

    async with _scripted(peer, timeout=30.0) as client:
        protocol = client.protocol
        assert protocol is not None
        assert protocol.transport is not None
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.2):
                await smtppipe.sendmail(client, SENDER, RECIPIENT, b"body")
        assert protocol.transport.get_protocol() is protocol


async def test_deadline_is_lifted_when_the_message_is_handed_over() -> None:
    """The caller's deadline stops at the final dot: a reply that comes after it, but
    within the final-reply limit, is the transaction's outcome."""

    async def peer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _envelope(reader)
        writer.write(b"250 ok\r\n250 ok\r\n354 go\r\n")
        await reader.readuntil(b"\r\n.\r\n")
        await asyncio.sleep(0.6)
        writer.write(b"250 queued as LATE\r\n")
        await reader.read()

    async with _scripted(peer, timeout=0.2) as client:
        async with asyncio.timeout(0.3) as deadline:
            reply = await smtppipe.sendmail(
                client,
                SENDER,
                RECIPIENT,
                b"body",
                deadline=deadline,
                final_reply_timeout=5.0,
            )
        assert reply == "queued as LATE"
        assert client.is_connected


@pytest.mark.parametrize(
    "after_dot",
    [b"", b"nonsense\r\n", None],
    ids=["disconnect", "malformed", "silent"],
)
async def test_no_reply_to_the_final_dot_is_reply_lost(after_dot: bytes | None) -> None:
    """Once the final dot is written, a disconnect, a malformed reply or none in time
    raise ReplyLost (the relay may have the message), chained to the cause; the client
    is closed."""

    async def peer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _envelope(reader)
        writer.write(b"250 ok\r\n250 ok\r\n354 go\r\n")
        await reader.readuntil(b"\r\n.\r\n")
        if after_dot is None:
            await reader.read()
        else:
            writer.write(after_dot)
            await writer.drain()

    async with _scripted(peer, timeout=5.0) as client:
        with pytest.raises(smtppipe.ReplyLost) as caught:
            await smtppipe.sendmail(
                client, SENDER, RECIPIENT, b"body", final_reply_timeout=0.3
            )
        assert not client.is_connected
    assert isinstance(caught.value.__cause__, aiosmtplib.SMTPException)


ADDRESSES = [
    "a b@example.org",
    '"a\x01b"@example.org',
    "x@example.org\r\nRSET",
    "Name <name@example.org>",
    '"quoted local"@example.org',
]


async def _outcome(send: Awaitable[object], sink: SmtpSink) -> tuple[Any, ...]:
    try:
        await send
    except ValueError:
        return ("ValueError", sink.attempts)
    return tuple(mail.rcpt_tos for mail in sink.received)


@pytest.mark.parametrize("address", ADDRESSES, ids=range(len(ADDRESSES)))
async def test_addresses_parsed_and_refused_as_sendmail_does(address: str) -> None:
    """An address goes on the wire, or is refused with ValueError before anything is
    sent, exactly as with aiosmtplib's sendmail."""
    async with (
        SmtpSink(pipelining=False) as plain_sink,
        SmtpSink() as pipe_sink,
        _client(plain_sink.port) as plain,
        _client(pipe_sink.port) as pipe,
    ):
        expected = await _outcome(plain.sendmail(SENDER, [address], b"x"), plain_sink)
        got = await _outcome(smtppipe.sendmail(pipe, SENDER, address, b"x"), pipe_sink)
        assert got == expected
        await smtppipe.sendmail(pipe, SENDER, RECIPIENT, b"next")
    assert pipe_sink.received[-1].rcpt_tos == (RECIPIENT,)


async def test_senders_quoted_alike_every_time_and_refused_every_time() -> None:
    """A sender is quoted the same on every message (its quoting is cached), and one
    that cannot go on a command line is refused on every message, before anything is
    sent (a refusal is never cached)."""
    async with SmtpSink() as sink, _client(sink.port) as client:
        for _ in range(2):
            with pytest.raises(ValueError, match="not permitted"):
                await smtppipe.sendmail(client, "<>\r\nRSET", RECIPIENT, b"x")
        assert sink.attempts == 0
        for _ in range(2):
            await smtppipe.sendmail(client, f"Alerts <{SENDER}>", RECIPIENT, b"x")
    assert [mail.mail_from for mail in sink.received] == [SENDER, SENDER]
