"""What every local sink server offers: a lifecycle, an outage on demand, and a record.

The sinks (SMTP, Twilio-compatible, webhook) stand in for the providers in tests, the
demo and benchmarks. They are not part of a production install: they ship with the
optional extra ``dispatcher[demo]``.
"""

from abc import ABC, abstractmethod
from typing import Generic, Self, TypeVar

R = TypeVar("R")


class Sink(ABC, Generic[R]):
    """A server on loopback that records what it accepts in ``received``.

    ``await start()`` listens (``port=0`` picks a free port, read it from ``.port``) and
    returns the sink; ``await stop()`` ends it. ``await go_down()`` refuses connections
    and cuts the open ones, as a crashed provider would, until ``await come_up()``
    listens again on the same port. ``async with Sink(...) as sink`` starts and stops.
    """

    def __init__(self, *, host: str, port: int) -> None:
        self.host = host
        self.port = port
        #: What arrived, oldest first (the sink says what it records); clear it to forget.
        self.received: list[R] = []

    @abstractmethod
    async def _listen(self) -> None:
        """Listen on ``host:port``; with port 0, set ``port`` to the one picked."""

    @abstractmethod
    async def _unlisten(self) -> None:
        """Stop listening and cut every open connection."""

    async def _teardown(self) -> None:
        """Free what ``_listen`` set up beyond the listening socket (after ``go_down``)."""

    async def start(self) -> Self:
        await self._listen()
        return self

    async def stop(self) -> None:
        await self._unlisten()
        await self._teardown()

    async def go_down(self) -> None:
        """Refuse connections and cut the open ones until ``come_up``."""
        await self._unlisten()

    async def come_up(self) -> None:
        """Listen again, on the same port."""
        await self._listen()

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()
