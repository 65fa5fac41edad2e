"""uvicorn inside our own process and event loop, started and stopped like the other
services, so ``dispatcher serve`` runs the API beside ingest and delivery."""

import asyncio
import contextlib
import socket
from collections.abc import Iterator, Sequence

import structlog
import uvicorn
from fastapi import FastAPI

from dispatcher.api.config import ApiSettings
from dispatcher.errors import DispatcherError

log = structlog.get_logger("dispatcher.api")


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # The process's own SIGTERM handler stops every service, this one included.
        yield


class ApiServer:
    """Serves an ASGI app with uvicorn's h11 protocol and the API's connection limits."""

    def __init__(
        self,
        app: FastAPI,
        api: ApiSettings,
        *,
        sockets: Sequence[socket.socket] | None = None,
    ) -> None:
        limits = api.limits
        config = uvicorn.Config(
            app,
            host=api.host,
            port=api.port,
            http="h11",
            lifespan="on",
            access_log=False,  # the path can hold ids people search for; we log none
            log_config=None,  # logging is ours (structlog)
            server_header=False,
            proxy_headers=False,
            timeout_keep_alive=int(max(1, limits.keep_alive_seconds)),
            limit_concurrency=limits.max_connections,
            h11_max_incomplete_event_size=limits.max_header_bytes,
            timeout_graceful_shutdown=10,
        )
        self._server = _Server(config)
        self._sockets = list(sockets) if sockets is not None else None
        self._task: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        """The port listened on (useful with ``port: 0``)."""
        server = self._server.servers[0]
        return int(server.sockets[0].getsockname()[1])

    async def _serve(self) -> None:
        try:
            await self._server.serve(sockets=self._sockets)
        except SystemExit:
            # uvicorn exits the process when it cannot bind or its lifespan fails.
            raise DispatcherError("the API server could not start") from None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._serve(), name="api-server")
        while not self._server.started:
            done, _ = await asyncio.wait({self._task}, timeout=0.02)
            if done:
                self._task.result()
                raise DispatcherError("the API server stopped while starting")
        log.info("dispatcher.api.started", port=self.port)

    async def stop(self) -> None:
        if self._task is None:
            return
        self._server.should_exit = True
        with contextlib.suppress(DispatcherError):
            await self._task
        log.info("dispatcher.api.stopped")
