"""Wake channel workers on PostgreSQL NOTIFY, from one dedicated connection.

Notifications are an optimisation: workers also sweep on a timer, so a lost notification
or a broken LISTEN connection delays a delivery by at most one poll interval.

A payload is a channel kind, alone or followed by the recipients that have new rows, one
per line (``NOTIFY_RECIPIENTS``: webhook endpoints, which are configuration names; never
an address or a phone number). A worker whose named recipients are all waiting for their
own cap or breaker can let the notification wait (``delivery/worker.py``).
"""

import asyncio
from collections.abc import Mapping, Sequence

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


class Notice:
    """One channel worker's notifications: ``event`` is set by each, and ``take`` says
    which recipients they named since it was last called (None: one named none, so
    anything of the channel may be new)."""

    __slots__ = ("_named", "event")

    def __init__(self) -> None:
        self.event = asyncio.Event()
        self._named: set[str] | None = set()

    def announce(self, named: Sequence[str] | None) -> None:
        if named is None:
            self._named = None
        elif self._named is not None:
            self._named.update(named)
        self.event.set()

    def take(self) -> frozenset[str] | None:
        named = None if self._named is None else frozenset(self._named)
        self._named = set()
        return named


class Waker:
    """LISTENs on the outbox channel and tells the worker named in the payload."""

    def __init__(
        self,
        database_url: str,
        notices: Mapping[str, Notice],
        *,
        reconnect_max: float = 10.0,
    ) -> None:
        self._dsn = asyncpg_dsn(database_url)
        self._notices = notices
        self._reconnect_max = reconnect_max
        self._task: asyncio.Task[None] | None = None
        self.connected = asyncio.Event()

    def _notified(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        kind, _, named = payload.partition("\n")
        notice = self._notices.get(kind)
        if notice is not None:
            notice.announce(named.split("\n") if named else None)

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
                for notice in self._notices.values():
                    # catch up on anything committed while we were not listening
                    notice.announce(None)
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
