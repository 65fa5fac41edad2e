"""A loopback TCP listener that only counts connections: proof that nothing was sent."""

import asyncio
import contextlib
import socket
from typing import Self


class ConnectionCounter:
    """Listens on 127.0.0.1 (and ::1 on the same port when IPv6 is there); counts accepts."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = 0
        self.connections = 0
        self._servers: list[asyncio.Server] = []

    async def __aenter__(self) -> Self:
        server = await asyncio.start_server(self._accept, self.host, 0)
        self.port = server.sockets[0].getsockname()[1]
        self._servers.append(server)
        if self.host == "127.0.0.1" and socket.has_ipv6:
            with contextlib.suppress(OSError):
                self._servers.append(
                    await asyncio.start_server(self._accept, "::1", self.port)
                )
        return self

    async def __aexit__(self, *_exc: object) -> None:
        for server in self._servers:
            server.close()
            await server.wait_closed()

    async def _accept(
        self, _reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.connections += 1
        writer.close()
