"""A loopback TCP relay with real network faults, without touching the shared servers:
``reset()`` drops every connection with a TCP RST (the client sees it at once), and
``blackhole()`` stops passing bytes while connections stay open (packets dropped, no RST:
a client notices only through its own timeouts) until ``heal()``."""

import asyncio
import contextlib
import socket
import struct
from typing import Self


class TcpRelay:
    """Relays 127.0.0.1:<port> to an upstream address, with faults switchable at run time."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self._upstream = (upstream_host, upstream_port)
        self.port = 0
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        #: One per relayed connection (kept after it closes): set while its bytes pass.
        self._flows: set[asyncio.Event] = set()
        self._hold_new = False

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *_: object) -> None:
        self.heal()
        self.reset()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def reset(self) -> None:
        for writer in list(self._writers):
            sock = writer.get_extra_info("socket")
            with contextlib.suppress(OSError):
                if sock is not None and sock.fileno() >= 0:
                    sock.setsockopt(
                        socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                    )
            writer.transport.abort()
        self._writers.clear()

    def blackhole(self, *, new_connections: bool = True) -> None:
        """Hold every byte of the open connections; with ``new_connections``, also of
        those opened from now on (their handshake never completes). Without it, only the
        connections open now are dead: a pooled connection that died half-open."""
        for flow in self._flows:
            flow.clear()
        self._hold_new = new_connections

    def heal(self) -> None:
        """Pass bytes again. A connection whose sender gave up (closed it) while held is
        closed at once without passing them: like dropped packets, they never arrive."""
        self._hold_new = False
        for flow in self._flows:
            flow.set()

    async def _accept(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._upstream)
        except OSError:
            writer.transport.abort()
            return
        self.connections += 1
        self._writers.update({writer, up_writer})
        flow = asyncio.Event()
        if not self._hold_new:
            flow.set()
        self._flows.add(flow)
        for src, origin, dst in (
            (reader, writer, up_writer),
            (up_reader, up_writer, writer),
        ):
            task = asyncio.create_task(self._pipe(src, origin, dst, flow))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(
        self,
        src: asyncio.StreamReader,
        origin: asyncio.StreamWriter,
        dst: asyncio.StreamWriter,
        flow: asyncio.Event,
    ) -> None:
        """Copy ``src`` to ``dst``; ``origin`` is the writer of ``src``'s own socket."""
        try:
            while data := await src.read(65536):
                while not flow.is_set():
                    if origin.transport.is_closing():
                        return  # the sender gave up while held: it never arrived
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(0.05):
                            await flow.wait()
                dst.write(data)
                await dst.drain()
        except OSError:
            pass
        finally:
            self._writers.discard(dst)
            dst.transport.abort()
