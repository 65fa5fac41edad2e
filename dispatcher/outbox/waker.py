"""Wake channel workers on PostgreSQL NOTIFY, from one dedicated connection.

Notifications are an optimisation: workers also sweep on a timer, so a lost notification
or a broken LISTEN connection delays a delivery by at most one poll interval.
"""

import asyncio
from collections.abc import Mapping

import asyncpg
import structlog
from sqlalchemy.engine import make_url

from dispatcher.db.connection import CONNECT_TIMEOUT, connect_options
from dispatcher.ingest.store import OUTBOX_NOTIFY_CHANNEL

log = structlog.get_logger("dispatcher.outbox")


def asyncpg_dsn(sqlalchemy_url: str) -> str:
    """The same database URL in the form asyncpg accepts."""
    return (
        make_url(sqlalchemy_url)
        .set(drivername="postgresql")
        .render_as_string(hide_password=False)
    )


class Waker:
    """LISTENs on the outbox channel and sets the event of the worker named in the payload."""

    def __init__(
        self,
        database_url: str,
        events: Mapping[str, asyncio.Event],
        *,
        reconnect_max: float = 10.0,
    ) -> None:
        self._dsn = asyncpg_dsn(database_url)
        self._events = events
        self._reconnect_max = reconnect_max
        self._task: asyncio.Task[None] | None = None
        self.connected = asyncio.Event()

    def _notified(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        event = self._events.get(payload)
        if event is not None:
            event.set()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="outbox-waker")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        delay = 0.5
        while True:
            conn: asyncpg.Connection | None = None
            try:
                conn = await asyncpg.connect(self._dsn, **connect_options())
                await conn.add_listener(OUTBOX_NOTIFY_CHANNEL, self._notified)
                self.connected.set()
                delay = 0.5
                for event in self._events.values():
                    event.set()  # catch up on anything committed while we were not listening
                while not conn.is_closed():
                    await asyncio.sleep(5)
                    # notice a dead connection promptly, a half-open one too
                    await conn.execute("SELECT 1", timeout=CONNECT_TIMEOUT)
            except asyncio.CancelledError:
                raise
            except (
                TimeoutError,
                OSError,
                asyncpg.PostgresError,
                asyncpg.InterfaceError,
            ) as exc:
                self.connected.clear()
                log.warning(
                    "dispatcher.outbox.listen_lost",
                    error_type=type(exc).__name__,
                    retry_in=delay,
                )
            finally:
                if conn is not None and not conn.is_closed():
                    await conn.close(timeout=2)
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._reconnect_max)
