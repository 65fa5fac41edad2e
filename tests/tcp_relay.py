"""A loopback TCP relay that injects network faults without touching the shared servers:
a connection lost for real (``reset``: the client sees a TCP reset) or a network path
that silently drops everything (``blackhole``, then ``heal``)."""

import asyncio
import contextlib
import socket
import struct
from collections.abc import Coroutine
from typing import Any, Self


class _Link:
    """One relayed connection: the client's side and the upstream side."""

    __slots__ = ("client", "cut", "upstream")

    def __init__(
        self, client: asyncio.StreamWriter, upstream: asyncio.StreamWriter | None
    ) -> None:
        self.client = client
        self.upstream = upstream
        #: Black-holed: bytes either way are dropped and neither end sees a close.
        self.cut = False


class TcpRelay:
    """Relays 127.0.0.1:<port> to an upstream address.

    ``reset()`` drops every live connection with a TCP RST (new ones are relayed again).
    ``blackhole()`` cuts the path the way a dead network or a middlebox that lost its state
    does: every live connection goes silent (what either end sends is dropped, a close is not
    passed on, so each end stays half-open until it gives up itself) and new connections are
    accepted but never reach upstream (``new_connections=False`` spares them). ``heal()``
    relays new connections again; the ones cut stay dead, since their bytes are gone. ``blackhole_on(pattern)`` black-holes at the
    moment upstream sends bytes containing ``pattern``, before they are passed on.
    """

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self._upstream = (upstream_host, upstream_port)
        self.port = 0
        self.connections = 0
        #: Set while the path is black-holed.
        self.blackholed = asyncio.Event()
        self._trigger: bytes | None = None
        self._server: asyncio.Server | None = None
        self._links: set[_Link] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *_: object) -> None:
        self.reset()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def reset(self) -> None:
        for link in list(self._links):
            for writer in (link.client, link.upstream):
                if writer is not None:
                    _abort_with_rst(writer)
        self._links.clear()

    def blackhole(self, *, new_connections: bool = True) -> None:
        """Cut every live connection; with ``new_connections``, also the path for those
        opened until ``heal()``. Without it only the connections open now die: a pooled
        connection that died half-open while the server stays reachable."""
        self._trigger = None
        if new_connections:
            self.blackholed.set()
        for link in self._links:
            link.cut = True

    def blackhole_on(self, pattern: bytes) -> None:
        self._trigger = pattern

    def heal(self) -> None:
        self.blackholed.clear()

    async def _accept(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        if self.blackholed.is_set():
            link = _Link(writer, None)
            link.cut = True
            self._links.add(link)
            self._spawn(self._pipe(reader, None, link, from_upstream=False))
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._upstream)
        except OSError:
            writer.transport.abort()
            return
        self.connections += 1
        link = _Link(writer, up_writer)
        self._links.add(link)
        self._spawn(self._pipe(reader, up_writer, link, from_upstream=False))
        self._spawn(self._pipe(up_reader, writer, link, from_upstream=True))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _pipe(
        self,
        src: asyncio.StreamReader,
        dst: asyncio.StreamWriter | None,
        link: _Link,
        *,
        from_upstream: bool,
    ) -> None:
        try:
            while data := await src.read(65536):
                if from_upstream and self._trigger and self._trigger in data:
                    self.blackhole()
                if link.cut or dst is None:
                    continue
                dst.write(data)
                await dst.drain()
        except OSError:
            pass
        finally:
            if not link.cut and dst is not None:
                self._links.discard(link)
                dst.transport.abort()


def _abort_with_rst(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    with contextlib.suppress(OSError):
        if sock is not None and sock.fileno() >= 0:
            sock.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
            )
    writer.transport.abort()
