"""A small pool of connected SMTP clients, so a burst of alerts does not pay a TCP and
TLS handshake per message, with connections kept for critical alerts."""

import asyncio
import collections
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import aiosmtplib


class SmtpPool:
    """At most ``size`` connections; idle ones are reused, broken ones discarded.

    ``critical_reserve`` of them only critical sends may take, and a critical send
    waiting for a connection gets the next one freed, ahead of every other send: as
    with the worker's reserved slots, a backlog of slow low-severity mail never makes a
    crisis alert queue for a connection. The reserve is at most ``size - 1``.

    A connection goes back to the pool only when the send ended normally or with an
    SMTP reply (``smtppipe.sendmail`` has already ended the transaction then); after a
    timeout, a disconnect or a cancellation its state is unknown, so it is closed.
    """

    def __init__(
        self,
        connect: Callable[[], Awaitable[aiosmtplib.SMTP]],
        size: int,
        *,
        critical_reserve: int = 0,
        quit_timeout: float = 2.0,
    ) -> None:
        self._connect = connect
        self._quit_timeout = quit_timeout
        self._gate = _Gate(size, min(critical_reserve, size - 1))
        self._idle: list[aiosmtplib.SMTP] = []
        self._closed = False
        #: Connections opened over the pool's life; for tests and metrics.
        self.opened = 0

    @contextlib.asynccontextmanager
    async def connection(
        self,
        *,
        critical: bool = False,
        lent: Callable[[], object] | None = None,
    ) -> AsyncIterator[aiosmtplib.SMTP]:
        """Lend a connected client for one send.

        Args:
            critical: The send is a critical delivery: it may take a reserved
                connection and waits ahead of the others.
            lent: Called once a connection is this send's, before an idle client is
                taken or a new one opened: the send's own deadline starts there.
        """
        if self._closed:
            raise RuntimeError("SMTP pool is closed")
        await self._gate.acquire(critical=critical)
        try:
            if lent is not None:
                lent()
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
        finally:
            self._gate.release(critical=critical)

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


class _Gate:
    """``size`` places: other sends hold at most ``size - reserve``, critical ones any.

    A freed place goes to the longest-waiting critical send, else to the longest-waiting
    other send if it has room; a newcomer never passes a waiter of its own kind. Places
    are handed over, not raced for, as in ``asyncio.Semaphore``.
    """

    def __init__(self, size: int, reserve: int) -> None:
        self._size = size
        self._general_cap = size - reserve
        self._held = 0
        self._general_held = 0
        self._critical_waiters: collections.deque[asyncio.Future[None]] = (
            collections.deque()
        )
        self._general_waiters: collections.deque[asyncio.Future[None]] = (
            collections.deque()
        )

    async def acquire(self, *, critical: bool) -> None:
        waiters = self._critical_waiters if critical else self._general_waiters
        if not waiters and self._has_room(critical=critical):
            self._hold(critical=critical)
            return
        waiter = asyncio.get_running_loop().create_future()
        waiters.append(waiter)
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                # Handed a place just as it was cancelled: pass the place on.
                self.release(critical=critical)
            else:
                with contextlib.suppress(ValueError):
                    waiters.remove(waiter)
            raise

    def release(self, *, critical: bool) -> None:
        self._held -= 1
        if not critical:
            self._general_held -= 1
        for is_critical, waiters in (
            (True, self._critical_waiters),
            (False, self._general_waiters),
        ):
            while waiters and self._has_room(critical=is_critical):
                waiter = waiters.popleft()
                if not waiter.done():
                    self._hold(critical=is_critical)
                    waiter.set_result(None)

    def _has_room(self, *, critical: bool) -> bool:
        return self._held < self._size and (
            critical or self._general_held < self._general_cap
        )

    def _hold(self, *, critical: bool) -> None:
        self._held += 1
        if not critical:
            self._general_held += 1
