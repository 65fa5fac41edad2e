"""A pooled connection kept for a hot loop: one round trip per statement, and dead-peer
detection while a unit of work runs."""

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any, Self

import structlog
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from dispatcher.db.connection import CONNECT_TIMEOUT
from dispatcher.errors import StorageUnavailable

log = structlog.get_logger("dispatcher.db")

#: ``KeptConnection.watched``: a unit of work that has waited this long is checked, and
#: again every interval after. A dead connection is found in 5 to 10 s.
PROBE_INTERVAL = 5.0
#: A session idle longer than this while we wait for its reply is not coming back.
_IDLE_GRACE = 2.0
_SESSION_BUSY = text(
    "SELECT state = 'active'"
    " OR clock_timestamp() - state_change < make_interval(secs => :grace)"
    " FROM pg_stat_activity WHERE pid = :pid"
)
_SET_SESSION = (
    "SELECT set_config(name, value, false)"
    " FROM unnest($1::text[], $2::text[]) AS s(name, value)"
)


class KeptConnection:
    """One pooled connection, checked out once and kept for a hot loop's statements.

    A statement on it costs one round trip: no checkout, pre-ping, BEGIN or COMMIT (a
    single statement runs in its own implicit transaction). After a failure it is
    invalidated and the next ``driver()`` opens a new one, so a restarted server is
    picked up. ``settings`` are session settings of its own (e.g. ``lock_timeout``);
    a connection that has them is closed rather than returned to the pool.
    """

    __slots__ = ("_conn", "_driver", "_engine", "_settings")

    def __init__(
        self, engine: AsyncEngine, *, settings: Mapping[str, str] | None = None
    ) -> None:
        self._engine = engine
        self._settings = dict(settings or {})
        self._conn: AsyncConnection | None = None
        self._driver: Any = None

    async def driver(self) -> Any:
        """The asyncpg connection (with the engine's codecs: jsonb decodes to dicts)."""
        if self._conn is None:
            # Bounded: the pool pings a reused connection first, and on a half-open
            # one that ping would wait for the command timeout.
            async with asyncio.timeout(2 * CONNECT_TIMEOUT):
                conn = await self._engine.connect()
                driver: Any = None
                try:
                    driver = (await conn.get_raw_connection()).driver_connection
                    if self._settings:
                        await driver.execute(
                            _SET_SESSION,
                            list(self._settings),
                            [*self._settings.values()],
                        )
                except BaseException:
                    await _discard(conn, driver)
                    raise
            self._conn, self._driver = conn, driver
        return self._driver

    @asynccontextmanager
    async def held(self) -> AsyncIterator[Self]:
        """Keep it for a loop's lifetime: closed when the loop ends, and discarded when it
        fails or is cancelled (perhaps mid-statement: never back to the pool as it is)."""
        try:
            yield self
        except BaseException:
            await self.close(broken=True)
            raise
        await self.close()

    async def close(self, *, broken: bool = False) -> None:
        conn, driver = self._conn, self._driver
        self._conn, self._driver = None, None
        if conn is None:
            return
        if broken:
            await _discard(conn, driver)
            return
        with contextlib.suppress(Exception):  # already broken: the pool drops it
            if self._settings:
                await conn.invalidate()
            await conn.close()

    @asynccontextmanager
    async def watched(self) -> AsyncIterator[Any]:
        """The asyncpg connection for one unit of work, ended at once if it is dead.

        A connection cut half-open (a network path that drops everything, a middlebox
        that lost its state) reports nothing: a statement on it waits for the command
        timeout. So while the block runs, PostgreSQL is asked every ``PROBE_INTERVAL``
        seconds, on another connection, what this session is doing. When it is idle
        (our statement or its reply was lost), gone, or nobody answers, the connection
        is terminated and the block fails with ``StorageUnavailable``.
        """
        driver = await self.driver()
        dead = asyncio.Event()
        watchdog = asyncio.create_task(self._watch(driver, dead))
        try:
            yield driver
        except Exception:
            if dead.is_set():
                raise StorageUnavailable(
                    "PostgreSQL stopped answering on this connection"
                ) from None
            raise
        finally:
            watchdog.cancel()
            await asyncio.gather(watchdog, return_exceptions=True)

    async def _watch(self, driver: Any, dead: asyncio.Event) -> None:
        pid = driver.get_server_pid()
        while True:
            await asyncio.sleep(PROBE_INTERVAL)
            busy = await self._session_busy(pid)
            if not busy:
                log.warning(
                    "dispatcher.db.connection_dead",
                    backend_pid=pid,
                    reason="no_answer" if busy is None else "session_idle",
                )
                dead.set()
                driver.terminate()
                return

    async def _session_busy(self, pid: int) -> bool | None:
        """Whether the session works for us (False: idle or gone; None: no answer)."""
        try:
            async with (
                asyncio.timeout(PROBE_INTERVAL),
                self._engine.connect() as conn,
            ):
                row = (
                    await conn.execute(
                        _SESSION_BUSY, {"pid": pid, "grace": _IDLE_GRACE}
                    )
                ).first()
        except Exception:  # noqa: BLE001 - no answer: the path to PostgreSQL is down
            return None
        return bool(row is not None and row[0])


async def _discard(conn: AsyncConnection, driver: Any) -> None:
    """Drop a connection that may be dead, without a goodbye that could wait on it."""
    with contextlib.suppress(Exception):
        if driver is not None:
            driver.terminate()
        await conn.invalidate()
        await conn.close()
