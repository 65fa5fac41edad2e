"""A real SMTP server on loopback that records what it accepts and misbehaves on demand.

For tests, the demo and benchmarks. It runs aiosmtpd's protocol on the caller's event
loop (not aiosmtpd's threaded ``Controller``), so port 0 works and faults switch
without locks.
"""

import asyncio
import logging
import re
import ssl
import time
from dataclasses import dataclass, field
from email.message import Message
from email.parser import BytesHeaderParser
from typing import Any, Final, Literal, cast

from dispatcher.errors import MissingExtra
from dispatcher.sinks.base import Sink

try:
    from aiosmtpd.smtp import SMTP, Envelope, Session, syntax
except ModuleNotFoundError as missing:
    if missing.name != "aiosmtpd":
        raise
    raise MissingExtra("demo", "aiosmtpd") from None

# aiosmtpd logs every command line, addresses included, at INFO.
logging.getLogger("mail.log").setLevel(logging.WARNING)


Stage = Literal["mail", "rcpt", "data_command", "data"]

#: ``<local@domain>`` with a dot-atom local part and a plain domain, then parameters.
_PLAIN_PATH: Final = re.compile(
    r"<([A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*)>[ \t]*(.*)",
    re.DOTALL,
)


@dataclass(frozen=True, slots=True)
class ReceivedMail:
    """One accepted message; its headers are parsed when read, not when received."""

    rcpt_count: int
    #: Whether the session had switched to TLS before the message.
    tls: bool
    #: ``time.time()`` when the message was taken: its reply was sent, or, with
    #: ``reply_delay``, its final dot arrived.
    received_at: float
    content: bytes = field(repr=False)
    #: The envelope as the server parsed it: MAIL FROM path and parameters, RCPT paths.
    mail_from: str = field(default="", repr=False)
    mail_options: tuple[str, ...] = ()
    rcpt_tos: tuple[str, ...] = field(default=(), repr=False)

    @property
    def message_id(self) -> str | None:
        return self._headers().get("Message-ID")

    @property
    def delivery_id(self) -> str | None:
        return self._headers().get("X-Dispatcher-Delivery-Id")

    @property
    def event_id(self) -> str | None:
        return self._headers().get("X-Dispatcher-Event-Id")

    @property
    def subject(self) -> str | None:
        return self._headers().get("Subject")

    def _headers(self) -> Message:
        return BytesHeaderParser().parsebytes(self.content)


class _Silent(asyncio.Protocol):
    """Accepts a connection and never says a word (no SMTP greeting)."""

    def __init__(self, sink: "SmtpSink") -> None:
        self._sink = sink

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._sink._transports.add(cast("asyncio.Transport", transport))  # noqa: SLF001


class _Handler:
    def __init__(self, sink: "SmtpSink") -> None:
        self._sink = sink

    async def handle_EHLO(  # noqa: N802 - aiosmtpd's hook name
        self,
        _server: SMTP,
        session: Session,
        _envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        # aiosmtpd records the client's name itself only when there is no EHLO hook.
        session.host_name = hostname
        if self._sink.pipelining:
            # aiosmtpd reads commands one by one from a stream, so pipelined commands
            # need nothing more than the keyword; the last line ("250 HELP") stays last.
            responses.insert(-1, "250-PIPELINING")
        return responses

    async def handle_MAIL(  # noqa: N802
        self,
        server: SMTP,
        _session: Session,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        reply = await self._sink._fault_reply("mail", server)  # noqa: SLF001
        if reply is not None:
            return reply
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(  # noqa: N802
        self,
        server: SMTP,
        _session: Session,
        envelope: Envelope,
        address: str,
        _rcpt_options: list[str],
    ) -> str:
        reply = await self._sink._fault_reply("rcpt", server)  # noqa: SLF001
        if reply is not None:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(  # noqa: N802
        self, server: SMTP, session: Session, envelope: Envelope
    ) -> str:
        sink = self._sink
        sink.attempts += 1
        if sink.data_delay is not None:
            await asyncio.sleep(sink.data_delay)
        reply = await sink._fault_reply("data", server)  # noqa: SLF001
        if reply is not None:
            return reply
        sink.received.append(
            ReceivedMail(
                rcpt_count=len(envelope.rcpt_tos),
                tls=session.ssl is not None,
                received_at=time.time(),
                content=envelope.original_content or b"",
                mail_from=envelope.mail_from or "",
                mail_options=tuple(envelope.mail_options),
                rcpt_tos=tuple(envelope.rcpt_tos),
            )
        )
        sink.accepted.set()
        queue_id = f"Q{len(sink.received):06d}"
        if sink.reply_delay is not None:
            # Taken already, as an MTA that queued the message before replying: a client
            # that gives up meanwhile has still delivered it.
            await asyncio.sleep(sink.reply_delay)
        return f"250 2.0.0 OK: queued as {queue_id}"


class SmtpSink(Sink[ReceivedMail]):
    """SMTP server on ``127.0.0.1``; ``port=0`` picks a free port (see ``.port``).

    It offers PIPELINING (RFC 2920) in its EHLO reply unless ``pipelining=False``, and
    SMTPUTF8 only with ``smtputf8=True``; ``pipelined`` counts the messages whose MAIL,
    RCPT and DATA arrived in one read.

    Faults, switchable at any time:
    - ``fail(code, times=None, stage="data")``: answer ``code`` for the next ``times``
      messages, or always, at ``stage``: ``mail``, ``rcpt``, ``data_command`` (instead
      of 354) or ``data`` (after the message);
    - ``cut(stage, times=1)``: close the connection at ``stage`` instead of answering;
    - ``hang_on_connect = True``: accept TCP connections but never greet;
    - ``data_delay = seconds``: sleep before taking the message after its final dot; a
      client that gives up meanwhile has not delivered it;
    - ``reply_delay = seconds``: take the message when its final dot arrives, then
      sleep before saying so; a client that gives up meanwhile has delivered it, as with
      a relay that queued the message and answered late;
    - ``await go_down()`` / ``await come_up()``: stop listening (connection refused).
    """

    def __init__(
        self,
        *,
        port: int = 0,
        tls_context: ssl.SSLContext | None = None,
        require_starttls: bool = False,
        pipelining: bool = True,
        smtputf8: bool = False,
    ) -> None:
        super().__init__(host="127.0.0.1", port=port)
        #: Set whenever a message is accepted; clear it to wait for the next one.
        self.accepted = asyncio.Event()
        #: TCP connections accepted, and DATA commands seen.
        self.connections = 0
        self.attempts = 0
        self.pipelining = pipelining
        #: Reads that held a whole envelope, MAIL through DATA: pipelined messages.
        self.pipelined = 0
        self.hang_on_connect = False
        self.data_delay: float | None = None
        self.reply_delay: float | None = None
        self._tls_context = tls_context
        self._require_starttls = require_starttls
        self._smtputf8 = smtputf8
        #: (stage, reply or None to cut the connection, how many more times).
        self._fault: tuple[Stage, str | None, int | None] | None = None
        self._server: asyncio.Server | None = None
        self._transports: set[asyncio.Transport] = set()

    @property
    def open_connections(self) -> int:
        """Client connections open right now."""
        return len(self._transports)

    def fail(
        self,
        code: int,
        *,
        times: int | None = None,
        stage: Stage = "data",
        text: str = "fault injected by SmtpSink",
    ) -> None:
        """Answer ``code`` for the next ``times`` messages (``None``: until ``heal``)."""
        self._fault = (stage, f"{code} {text}", times)

    def cut(self, stage: Stage, *, times: int | None = 1) -> None:
        """Close the connection at ``stage`` instead of answering, ``times`` times."""
        self._fault = (stage, None, times)

    def heal(self) -> None:
        """Clear every fault that a running server can clear."""
        self._fault = None
        self.hang_on_connect = False
        self.data_delay = None
        self.reply_delay = None

    async def _fault_reply(self, stage: Stage, server: SMTP) -> str | None:
        """The injected reply at ``stage``, if any; a cut never returns."""
        if self._fault is None or self._fault[0] != stage:
            return None
        _, reply, times = self._fault
        if times is not None:
            self._fault = (stage, reply, times - 1) if times > 1 else None
        if reply is None:
            if server.transport is not None:
                server.transport.close()
            # Losing the connection cancels aiosmtpd's handler, and this with it.
            await asyncio.get_running_loop().create_future()
        return reply

    def _protocol(self) -> asyncio.BaseProtocol:
        self.connections += 1
        if self.hang_on_connect:
            return _Silent(self)
        return _Tracked(
            self,
            _Handler(self),
            hostname="sink.localhost",
            tls_context=self._tls_context,
            require_starttls=self._require_starttls,
            enable_SMTPUTF8=self._smtputf8,
            timeout=30,
        )

    async def _listen(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._protocol, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _unlisten(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        # Before waiting: from Python 3.12 on, wait_closed waits for the connections too.
        for transport in list(self._transports):
            transport.abort()
        self._transports.clear()
        if server is not None:
            await server.wait_closed()


class _Tracked(SMTP):
    def __init__(self, sink: SmtpSink, handler: _Handler, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self._sink = sink
        self._raw: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Called again after STARTTLS with the TLS transport; track the TCP one.
        if self._raw is None:
            self._raw = cast("asyncio.Transport", transport)
            self._sink._transports.add(self._raw)  # noqa: SLF001
        super().connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._raw is not None:
            self._sink._transports.discard(self._raw)  # noqa: SLF001
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        # A pipelining client writes MAIL, RCPT and DATA at once (RFC 2920); a client
        # that waits for each reply never has all three in one read.
        if data.startswith(b"MAIL ") and data.endswith(b"\r\nDATA\r\n"):
            self._sink.pipelined += 1
        super().data_received(data)

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:  # noqa: N802 - aiosmtpd's command method
        # aiosmtpd has no hook for the DATA command itself, only for the message after it.
        reply = await self._sink._fault_reply("data_command", self)  # noqa: SLF001
        if reply is not None:
            await self.push(reply)
            return
        await super().smtp_DATA(arg)

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        # aiosmtpd runs every MAIL and RCPT path through email's RFC 5322 parser and
        # defines a Protocol class per call: a sixth of the sink's CPU. Plain
        # <local@domain> paths get the same answer from a regex; the rest still go there.
        match = _PLAIN_PATH.fullmatch(arg)
        if (
            match is None
            or len(match[1].rpartition("@")[0]) > self.local_part_limit > 0
        ):
            address, rest = super()._getaddr(arg)
            return address, rest
        return match[1], match[2]
