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
from dispatcher.outbox.claims import OUTBOX_NOTIFY_CHANNEL
from dispatcher.resilience.backoff import Backoff

log = structlog.get_logger("dispatcher.outbox")


def asyncpg_dsn(sqlalchemy_url: str) -> str:
    """The same database URL in the form asyncpg accepts.

    SQLAlchemy's asyncpg dialect reads ``?ssl=require`` as the ``ssl`` argument, while
    asyncpg's own DSN parser knows it as ``sslmode`` and would send ``ssl`` to the
    server as a setting, which the server refuses.
    """
    url = make_url(sqlalchemy_url).set(drivername="postgresql")
    query = dict(url.query)
    if "ssl" in query:
        query["sslmode"] = query.pop("ssl")
    return url.set(query=query).render_as_string(hide_password=False)


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
        backoff = Backoff(0.5, self._reconnect_max)
        while True:
            conn: asyncpg.Connection | None = None
            lost = "closed"
            try:
                conn = await asyncpg.connect(self._dsn, **connect_options())
                await conn.add_listener(OUTBOX_NOTIFY_CHANNEL, self._notified)
                self.connected.set()
                backoff.reset()
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
                lost = type(exc).__name__
            finally:
                if conn is not None and not conn.is_closed():
                    await conn.close(timeout=2)
            self.connected.clear()
            delay = backoff.next_delay()
            log.warning(
                "dispatcher.outbox.listen_lost",
                error_type=lost,
                retry_in=round(delay, 3),
            )
            await asyncio.sleep(delay)
