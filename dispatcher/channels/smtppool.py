"""A small pool of connected SMTP clients, so a burst of alerts does not pay a TCP and
TLS handshake per message."""

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import aiosmtplib


class SmtpPool:
    """At most ``size`` connections; idle ones are reused, broken ones discarded.

    A connection goes back to the pool only when the send ended normally or with an
    SMTP reply (aiosmtplib's ``sendmail`` or ``smtppipe.sendmail`` has already sent
    RSET then); after a timeout, a disconnect or a cancellation its state is unknown,
    so it is closed.
    """

    def __init__(
        self,
        connect: Callable[[], Awaitable[aiosmtplib.SMTP]],
        size: int,
        *,
        quit_timeout: float = 2.0,
    ) -> None:
        self._connect = connect
        self._quit_timeout = quit_timeout
        self._slots = asyncio.Semaphore(size)
        self._idle: list[aiosmtplib.SMTP] = []
        self._closed = False
        #: Connections opened over the pool's life; for tests and metrics.
        self.opened = 0

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[aiosmtplib.SMTP]:
        """Lend a connected client for one send."""
        if self._closed:
            raise RuntimeError("SMTP pool is closed")
        async with self._slots:
            client = await self._take()
            try:
                yield client
            except (aiosmtplib.SMTPResponseException, aiosmtplib.SMTPRecipientsRefused):
                self._give_back(client)
                raise
            except BaseException:
                client.close()
                raise
            self._give_back(client)

    async def _take(self) -> aiosmtplib.SMTP:
        while self._idle:
            client = self._idle.pop()
            if client.is_connected:
                return client
            client.close()
        client = await self._connect()
        self.opened += 1
        return client

    def _give_back(self, client: aiosmtplib.SMTP) -> None:
        if client.is_connected and not self._closed:
            self._idle.append(client)
        else:
            client.close()

    async def aclose(self) -> None:
        """Say QUIT on idle connections and close them; lent ones close on return."""
        self._closed = True
        idle, self._idle = self._idle, []
        for client in idle:
            with contextlib.suppress(aiosmtplib.SMTPException, OSError):
                await client.quit(timeout=self._quit_timeout)
            client.close()
