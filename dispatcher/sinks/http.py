"""The aiohttp server under the HTTP sinks (Twilio-compatible and webhook)."""

import ssl
from abc import abstractmethod
from typing import TypeVar

from aiohttp import web

from dispatcher.sinks.base import Sink

R = TypeVar("R")

#: How long stopping or going down waits for a handler in progress before cutting it.
_GRACE_SECONDS = 0.1


class HttpSink(Sink[R]):
    """An HTTP (or, with ``ssl_context``, HTTPS) sink: subclasses answer in ``_handle``."""

    def __init__(
        self, *, host: str, port: int, ssl_context: ssl.SSLContext | None = None
    ) -> None:
        super().__init__(host=host, port=port)
        self._ssl = ssl_context
        self._runner: web.ServerRunner | None = None
        self._site: web.TCPSite | None = None

    @property
    def open_connections(self) -> int:
        """Client connections open right now."""
        server = self._runner.server if self._runner is not None else None
        return len(server.connections) if server is not None else 0

    @abstractmethod
    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        """Answer one request."""

    async def _listen(self) -> None:
        if self._runner is None:
            # aiohttp's low-level server: every path is handled alike, so no
            # application, router or middleware chain per request.
            server = web.Server(self._handle, access_log=None)
            self._runner = web.ServerRunner(server, shutdown_timeout=_GRACE_SECONDS)
            await self._runner.setup()
        self._site = web.TCPSite(
            self._runner, self.host, self.port, ssl_context=self._ssl
        )
        await self._site.start()
        self.port = self._runner.addresses[0][1]

    async def _unlisten(self) -> None:
        if self._site is not None:
            await self._site.stop()
            self._site = None
        server = self._runner.server if self._runner is not None else None
        if server is not None:
            await server.shutdown(_GRACE_SECONDS)

    async def _teardown(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
