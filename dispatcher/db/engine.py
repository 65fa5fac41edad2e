"""The connection pool, and the one place driver errors become dispatcher errors."""

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import asyncpg
import structlog
from asyncpg.exceptions._base import DataError as InputDataError
from sqlalchemy import exc as sa_exc
from sqlalchemy import text
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    async_sessionmaker,
    create_async_engine,
)

from dispatcher.db.connection import CONNECT_TIMEOUT, connect_options
from dispatcher.errors import StorageConflict, StorageUnavailable

log = structlog.get_logger("dispatcher.db")

#: asyncpg errors that mean "the data was refused": retrying the same data cannot help.
_DATA_ERRORS = (
    asyncpg.exceptions.DataError,
    InputDataError,  # a value asyncpg cannot encode (e.g. a lone surrogate)
    asyncpg.exceptions.IntegrityConstraintViolationError,
    asyncpg.exceptions.UntranslatableCharacterError,
)

#: PostgreSQL errors that say "not now": a lock not granted in ``lock_timeout``, a
#: deadlock, a session ended for idling in a transaction. Retrying the same data succeeds.
_TRANSIENT_ERRORS = (
    asyncpg.exceptions.LockNotAvailableError,
    asyncpg.exceptions.DeadlockDetectedError,
    asyncpg.exceptions.IdleInTransactionSessionTimeoutError,
)


def create_engine(
    url: str,
    *,
    pool_size: int = 10,
    application_name: str = "dispatcher",
    server_settings: Mapping[str, str] | None = None,
) -> AsyncEngine:
    """A pooled async engine with bounded connect and statement times.

    ``server_settings`` adds session settings to every connection (e.g. the audit API's
    ``statement_timeout``).
    """
    options = connect_options(application_name)
    options["server_settings"] = {
        **options["server_settings"],
        **(server_settings or {}),
    }
    return create_async_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=True,
        pool_recycle=1800,
        connect_args=options,
    )


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker:  # type: ignore[type-arg]
    """The one session factory; sessions never outlive a batch or a task."""
    return async_sessionmaker(engine, expire_on_commit=False)


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


@contextmanager
def wrap_db_errors() -> Iterator[None]:
    """Translate driver errors once. Messages carry the class name only: asyncpg's text
    includes DETAIL lines with row values (PII), so ``str(exc)`` is never propagated."""
    try:
        yield
    except sa_exc.DBAPIError as exc:
        orig = getattr(exc, "orig", None)
        cause = getattr(orig, "__cause__", None) or orig
        if isinstance(cause, _TRANSIENT_ERRORS):
            raise StorageUnavailable(
                f"PostgreSQL asks for a retry ({_name(cause)})"
            ) from None
        if isinstance(exc, (sa_exc.IntegrityError, sa_exc.DataError)) or isinstance(
            cause, _DATA_ERRORS
        ):
            raise StorageConflict(
                f"PostgreSQL refused the data ({_name(cause or exc)})"
            ) from None
        raise StorageUnavailable(
            f"PostgreSQL is unavailable ({_name(cause or exc)})"
        ) from None
    except _DATA_ERRORS as exc:  # raised as is by code that drives asyncpg directly
        raise StorageConflict(f"PostgreSQL refused the data ({_name(exc)})") from None
    except _TRANSIENT_ERRORS as exc:
        raise StorageUnavailable(
            f"PostgreSQL asks for a retry ({_name(exc)})"
        ) from None
    except (
        TimeoutError,
        OSError,
        asyncpg.exceptions.PostgresConnectionError,
        asyncpg.exceptions.InterfaceError,
        # seen when the server goes away mid-transaction on a connection driven directly
        asyncpg.exceptions.InternalClientError,
    ) as exc:
        raise StorageUnavailable(f"PostgreSQL is unavailable ({_name(exc)})") from None
    except asyncpg.exceptions.PostgresError as exc:
        raise StorageUnavailable(f"PostgreSQL error ({_name(exc)})") from None


def _name(exc: BaseException) -> str:
    sqlstate = getattr(exc, "sqlstate", None)
    return (
        f"{type(exc).__name__}, SQLSTATE {sqlstate}" if sqlstate else type(exc).__name__
    )
