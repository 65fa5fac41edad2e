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
from typing import Any, Final, Literal, Self, cast

from aiosmtpd.smtp import SMTP, Envelope, Session

# aiosmtpd logs every command line, addresses included, at INFO.
logging.getLogger("mail.log").setLevel(logging.WARNING)


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
    #: ``time.time()`` when DATA was accepted.
    received_at: float
    content: bytes = field(repr=False)

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

    async def handle_RCPT(  # noqa: N802 - aiosmtpd's hook name
        self,
        _server: SMTP,
        _session: Session,
        envelope: Envelope,
        address: str,
        _rcpt_options: list[str],
    ) -> str:
        reply = self._sink._fault_reply("rcpt")  # noqa: SLF001
        if reply is not None:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(  # noqa: N802
        self, _server: SMTP, session: Session, envelope: Envelope
    ) -> str:
        sink = self._sink
        sink.attempts += 1
        if sink.data_delay is not None:
            await asyncio.sleep(sink.data_delay)
        reply = sink._fault_reply("data")  # noqa: SLF001
        if reply is not None:
            return reply
        sink.received.append(
            ReceivedMail(
                rcpt_count=len(envelope.rcpt_tos),
                tls=session.ssl is not None,
                received_at=time.time(),
                content=envelope.original_content or b"",
            )
        )
        sink.accepted.set()
        return "250 2.0.0 OK: queued as " + f"Q{len(sink.received):06d}"


class SmtpSink:
    """SMTP server on ``127.0.0.1``; ``port=0`` picks a free port (see ``.port``).

    Faults, switchable at any time:
    - ``fail(code, times=None, stage="data")``: answer ``code`` at RCPT or DATA for the
      next ``times`` messages, or always;
    - ``hang_on_connect = True``: accept TCP connections but never greet;
    - ``data_delay = seconds``: sleep before answering DATA;
    - ``await go_down()`` / ``await come_up()``: stop listening (connection refused).
    """

    def __init__(
        self,
        *,
        port: int = 0,
        tls_context: ssl.SSLContext | None = None,
        require_starttls: bool = False,
    ) -> None:
        self.host = "127.0.0.1"
        self.port = port
        self.received: list[ReceivedMail] = []
        #: Set whenever a message is accepted; clear it to wait for the next one.
        self.accepted = asyncio.Event()
        #: TCP connections accepted, and DATA commands seen.
        self.connections = 0
        self.attempts = 0
        self.hang_on_connect = False
        self.data_delay: float | None = None
        self._tls_context = tls_context
        self._require_starttls = require_starttls
        self._fault: tuple[str, str, int | None] | None = None
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
        stage: Literal["rcpt", "data"] = "data",
        text: str = "fault injected by SmtpSink",
    ) -> None:
        """Answer ``code`` for the next ``times`` messages (``None``: until ``heal``)."""
        self._fault = (stage, f"{code} {text}", times)

    def heal(self) -> None:
        """Clear every fault that a running server can clear."""
        self._fault = None
        self.hang_on_connect = False
        self.data_delay = None

    def _fault_reply(self, stage: str) -> str | None:
        if self._fault is None or self._fault[0] != stage:
            return None
        _, reply, times = self._fault
        if times is not None:
            self._fault = (stage, reply, times - 1) if times > 1 else None
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
            timeout=30,
        )

    async def start(self) -> Self:
        """Listen; on the same port again after ``go_down``."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._protocol, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        """Stop listening and cut every open connection."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for transport in list(self._transports):
            transport.abort()
        self._transports.clear()

    async def go_down(self) -> None:
        await self.stop()

    async def come_up(self) -> None:
        await self.start()

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()


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
