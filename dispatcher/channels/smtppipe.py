"""One SMTP transaction, pipelined (RFC 2920) where the relay offers it, with the moment
the message is handed over kept apart.

aiosmtplib's ``sendmail`` waits for the reply to each of MAIL, RCPT, DATA and the message:
four round trips per message. When the relay offers PIPELINING in its EHLO reply (Postfix,
SES, SendGrid and Exchange do), ``sendmail`` here writes MAIL FROM, RCPT TO and DATA at
once, reads their three replies, and only then sends the message; without it, one command
at a time. The rules it keeps (RFC 2920 section 3.1):

- DATA is the last command of a group, and the message goes out only after its 354: a
  relay that refused the envelope would read the message's lines as commands.
- Every reply of a group is read, in order, even after a refusal: each unread reply would
  be taken for the answer to the next command on the connection.
- A refused envelope does not mean a refused DATA: if DATA still got 354, a lone ``.``
  ends the empty message. RSET then clears the transaction, so the pooled connection
  stays usable, as aiosmtplib's ``sendmail`` does after a refusal.

Once the final ``.`` of the message is written, the relay may accept the message at any
moment, so giving up is no longer "not sent": the reply to the final dot has its own,
longer limit (RFC 5321 4.5.3.2.6 suggests 10 minutes, precisely to avoid duplicates), the
caller's deadline is lifted when the dot goes out, and a reply that never comes (timeout,
disconnect, garbage) raises ``ReplyLost``: the outcome is unknown. A reply ends the
transaction whatever its code (RFC 5321 4.1.1.4), so no RSET follows it.

What goes on the wire is built with aiosmtplib's own helpers (address quoting, line
endings, dot-stuffing, the RFC 1870 SIZE parameter), and refusals raise the exceptions its
``sendmail`` raises, so the bytes and the classification are those of aiosmtplib.

Replies are not read with ``SMTPProtocol.read_response``: aiosmtplib expects one reply per
command written, parses one reply per packet and drops bytes that arrive while no command
is waiting (``protocol.py: data_received``), so the second and third replies of a group
are lost (tried with 5.1.3: the RCPT reply timed out). For the length of one transaction,
``_Replies`` takes the transport's place (``BaseTransport.set_protocol``, which aiosmtpd
uses for STARTTLS too), parses every reply it receives, and hands the transport back;
connection loss and flow control still reach aiosmtplib's protocol.
"""

import asyncio
import collections
import contextlib
import functools
from collections.abc import Sequence
from typing import Final

import aiosmtplib
from aiosmtplib import SMTPResponse, SMTPStatus
from aiosmtplib.email import quote_address
from aiosmtplib.protocol import (
    COMMAND_INJECTION_REGEX,
    MAX_LINE_LENGTH,
    MAX_RESPONSE_LENGTH,
    PERIOD_REGEX,
    SMTPProtocol,
    normalize_message_line_endings,
)

#: ``quote_address`` of a sender: a relay's sender is the same on every message, and
#: quoting (the stdlib's address parser) cost about 8 µs per message.
_quoted_sender: Final = functools.lru_cache(maxsize=64)(quote_address)

_RCPT_ACCEPTED: Final = frozenset({SMTPStatus.completed, SMTPStatus.will_forward})
#: The reply each envelope command needs for the transaction to go on: MAIL, RCPT, DATA.
_ACCEPTED: Final = (
    frozenset({SMTPStatus.completed}),
    _RCPT_ACCEPTED,
    frozenset({SMTPStatus.start_input}),
)

Refusal = aiosmtplib.SMTPResponseException | aiosmtplib.SMTPRecipientsRefused


class ReplyLost(aiosmtplib.SMTPException):
    """The message was handed over (its final dot written) and no reply came.

    The relay may have accepted it. The cause (a timeout, a disconnect, a malformed
    reply) is chained; the client is closed.
    """


async def greet(client: aiosmtplib.SMTP) -> None:
    """EHLO, or HELO if the relay refuses EHLO, unless this session already has.

    As aiosmtplib's ``sendmail`` does: needed before a session's first message and
    after STARTTLS, which forgets the EHLO reply.
    """
    if not client.is_ehlo_or_helo_needed:
        return
    try:
        await client.ehlo()
    except aiosmtplib.SMTPHeloError:
        if not client.is_connected:
            raise
        await client.helo()


async def sendmail(
    client: aiosmtplib.SMTP,
    sender: str,
    recipient: str,
    message: bytes,
    *,
    mail_options: Sequence[str] = (),
    deadline: asyncio.Timeout | None = None,
    final_reply_timeout: float | None = None,
) -> str:
    """Send one message to one recipient, with MAIL, RCPT and DATA in one write if the
    relay offers PIPELINING.

    The caller has the client to itself (the pool lends it to one send at a time). Each
    reply before the final dot may take ``client.timeout``.

    Args:
        mail_options: MAIL parameters after SIZE (e.g. ``SMTPUTF8``); with ``SMTPUTF8``
            the addresses are sent as UTF-8.
        deadline: The caller's deadline for the send, lifted just before the final dot
            is written: from then on only ``final_reply_timeout`` applies.
        final_reply_timeout: Longest wait for the reply to the final dot;
            ``client.timeout`` when not given.

    Returns:
        The relay's reply to the message; it often names a queue id.

    Raises:
        ValueError: An address cannot go on a command line (before anything is sent).
        SMTPSenderRefused: MAIL was refused.
        SMTPRecipientsRefused: RCPT was refused.
        SMTPDataError: DATA or the message was refused.
        ReplyLost: The message was handed over and no reply came; the client is closed.
        SMTPServerDisconnected: The connection broke before that; the client is closed.
        SMTPReadTimeoutError: A reply before that took too long; the client is closed.
        SMTPResponseException: A malformed reply (code -1); the client is closed.
    """
    await greet(client)
    protocol = client.protocol
    transport = None if protocol is None else protocol.transport
    if protocol is None or transport is None:
        raise aiosmtplib.SMTPServerDisconnected("Server not connected")
    content = normalize_message_line_endings(message)
    utf8 = any(option.lower() == "smtputf8" for option in mail_options)
    encoding = "utf-8" if utf8 else "ascii"
    mail = [b"MAIL", b"FROM:" + _quoted_sender(sender).encode(encoding)]
    if client.supports_extension("size"):
        mail.append(f"size={len(content)}".encode("ascii"))
    mail += [option.encode("ascii") for option in mail_options]
    rcpt = [b"RCPT", b"TO:" + quote_address(recipient).encode(encoding)]
    envelope = (_command(*mail), _command(*rcpt), b"DATA\r\n")
    replies = _Replies(protocol, transport, client.timeout)
    handed_over = False
    try:
        got = await _envelope(
            protocol,
            replies,
            envelope,
            pipelined=client.supports_extension("pipelining"),
        )
        refusal = _refusal(got, sender, recipient)
        if refusal is None:
            if deadline is not None:
                deadline.reschedule(None)
            protocol.write(PERIOD_REGEX.sub(b"..", content) + b".\r\n")
            handed_over = True
            got.append(await _final_reply(client, replies, final_reply_timeout))
            if got[-1].code == SMTPStatus.completed:
                return got[-1].message
            refusal = aiosmtplib.SMTPDataError(got[-1].code, got[-1].message)
        elif got[-1].code == SMTPStatus.start_input:
            # DATA accepted after a refused envelope: end the empty message (RFC 2920).
            protocol.write(b".\r\n")
            got.append(await replies.read())
    except (
        aiosmtplib.SMTPServerDisconnected,
        aiosmtplib.SMTPTimeoutError,
        aiosmtplib.SMTPResponseException,
    ):
        # Replies may be missing or unread: the next command could get a stale one.
        client.close()
        raise
    finally:
        replies.detach()
    if any(reply.code == SMTPStatus.domain_unavailable for reply in got):
        client.close()  # 421: the relay is closing the session
    elif not handed_over:
        # The reply to the final dot has ended the transaction; a refused envelope not.
        with contextlib.suppress(ConnectionError, aiosmtplib.SMTPResponseException):
            await client.rset()
    raise refusal


async def _envelope(
    protocol: SMTPProtocol,
    replies: "_Replies",
    commands: tuple[bytes, bytes, bytes],
    *,
    pipelined: bool,
) -> list[SMTPResponse]:
    """The replies to MAIL, RCPT and DATA, or fewer: after a 421 and, one command at a
    time, after the first refusal."""
    got: list[SMTPResponse] = []
    if pipelined:
        protocol.write(b"".join(commands))
    for command, accepted in zip(commands, _ACCEPTED, strict=True):
        if not pipelined:
            protocol.write(command)
        got.append(await replies.read())
        if got[-1].code == SMTPStatus.domain_unavailable or (
            not pipelined and got[-1].code not in accepted
        ):
            break
    return got


async def _final_reply(
    client: aiosmtplib.SMTP, replies: "_Replies", within: float | None
) -> SMTPResponse:
    try:
        return await replies.read(within if within is not None else client.timeout)
    except (
        aiosmtplib.SMTPServerDisconnected,
        aiosmtplib.SMTPTimeoutError,
        aiosmtplib.SMTPResponseException,
    ) as exc:
        client.close()
        raise ReplyLost(
            "no reply to the final dot: the relay may have accepted the message"
        ) from exc


def _command(*args: bytes) -> bytes:
    # aiosmtplib's execute_command refuses the same characters.
    for arg in args:
        if COMMAND_INJECTION_REGEX.search(arg):
            raise ValueError("Command arg contains a prohibited control character")
    return b" ".join(args) + b"\r\n"


def _refusal(got: list[SMTPResponse], sender: str, recipient: str) -> Refusal | None:
    """What aiosmtplib's ``sendmail`` raises for the first refused command, if any.

    ``got`` holds the replies to MAIL, RCPT and DATA, or fewer when one was a 421 or,
    one command at a time, a refusal: that one is then refused, so the missing replies
    are never looked at.
    """
    mail = got[0]
    if mail.code != SMTPStatus.completed:
        return aiosmtplib.SMTPSenderRefused(mail.code, mail.message, sender)
    rcpt = got[1]
    if rcpt.code not in _RCPT_ACCEPTED:
        refused = aiosmtplib.SMTPRecipientRefused(rcpt.code, rcpt.message, recipient)
        return aiosmtplib.SMTPRecipientsRefused([refused])
    data = got[2]
    if data.code != SMTPStatus.start_input:
        return aiosmtplib.SMTPDataError(data.code, data.message)
    return None


class _Replies(asyncio.Protocol):
    """Stands in for aiosmtplib's protocol on the transport and keeps every reply."""

    def __init__(
        self,
        smtp: SMTPProtocol,
        transport: asyncio.BaseTransport,
        timeout: float | None,
    ) -> None:
        self._smtp = smtp
        self._transport = transport
        self._timeout = timeout
        self._buffer = bytearray()
        self._ready: collections.deque[SMTPResponse] = collections.deque()
        self._error: aiosmtplib.SMTPException | None = None
        self._wakeup: asyncio.Future[None] | None = None
        transport.set_protocol(self)

    def detach(self) -> None:
        """Hand the transport back to aiosmtplib's protocol; unread bytes are dropped."""
        if self._transport.get_protocol() is self:
            self._transport.set_protocol(self._smtp)

    async def read(self, within: float | None = None) -> SMTPResponse:
        """The next reply, in order; replies that came before a disconnect come first.

        Raises:
            SMTPReadTimeoutError: No reply ``within`` seconds, or the client's timeout
                per reply (as aiosmtplib) when it is not given.
        """
        while not self._ready:
            if self._error is not None:
                raise self._error
            self._wakeup = asyncio.get_running_loop().create_future()
            try:
                async with asyncio.timeout(within or self._timeout):
                    await self._wakeup
            except TimeoutError as exc:
                raise aiosmtplib.SMTPReadTimeoutError(
                    "Timed out waiting for server response"
                ) from exc
        return self._ready.popleft()

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        try:
            self._ready.extend(_parse(self._buffer))
        except aiosmtplib.SMTPResponseException as exc:
            self._fail(exc)
        self._wake()

    def eof_received(self) -> bool:
        self._fail(aiosmtplib.SMTPServerDisconnected("Unexpected EOF received"))
        return False  # the transport closes, then connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        error = aiosmtplib.SMTPServerDisconnected("Connection lost")
        error.__cause__ = exc
        self._fail(error)
        self._smtp.connection_lost(exc)

    def pause_writing(self) -> None:
        self._smtp.pause_writing()

    def resume_writing(self) -> None:
        self._smtp.resume_writing()

    def _fail(self, error: aiosmtplib.SMTPException) -> None:
        if self._error is None:
            self._error = error
        self._wake()

    def _wake(self) -> None:
        if self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_result(None)


def _parse(buffer: bytearray) -> list[SMTPResponse]:
    """Take every complete reply off the front of ``buffer``.

    A reply is parsed as aiosmtplib parses one (``_read_response_from_buffer``): the code
    of its last line, the text after each code with line ends and blanks stripped, joined
    by newlines; the same limits and the same malformed-reply error (without the line,
    which can quote an address).
    """
    replies: list[SMTPResponse] = []
    lines: list[bytes] = []
    taken = offset = 0
    while (end := buffer.find(b"\n", offset)) != -1:
        line = bytes(buffer[offset : end + 1])
        offset = end + 1
        if len(line) > MAX_LINE_LENGTH:
            raise aiosmtplib.SMTPResponseException(
                SMTPStatus.invalid_response.value, "Response too long"
            )
        try:
            code = int(line[:3])
        except ValueError:
            raise aiosmtplib.SMTPResponseException(
                SMTPStatus.invalid_response.value, "Malformed SMTP response line"
            ) from None
        lines.append(line[4:].strip(b" \t\r\n"))
        if line[3:4] != b"-":
            text = b"\n".join(lines).decode("utf-8", "surrogateescape")
            replies.append(SMTPResponse(code, text))
            lines.clear()
            taken = offset
    del buffer[:taken]
    if len(buffer) > MAX_RESPONSE_LENGTH:
        raise aiosmtplib.SMTPResponseException(
            SMTPStatus.invalid_response.value, "Response too long"
        )
    return replies
