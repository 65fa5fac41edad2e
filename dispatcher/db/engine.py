"""The connection pool, and the one place driver errors become dispatcher errors."""

import contextlib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import asyncpg
from asyncpg.exceptions._base import DataError as InputDataError
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    async_sessionmaker,
    create_async_engine,
)

from dispatcher.errors import StorageConflict, StorageUnavailable

#: asyncpg errors that mean "the data was refused": retrying the same data cannot help.
_DATA_ERRORS = (
    asyncpg.exceptions.DataError,
    InputDataError,  # a value asyncpg cannot encode (e.g. a lone surrogate)
    asyncpg.exceptions.IntegrityConstraintViolationError,
    asyncpg.exceptions.UntranslatableCharacterError,
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
    return create_async_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=True,
        pool_recycle=1800,
        connect_args={
            "timeout": 5,
            "command_timeout": 60,
            "server_settings": {
                "application_name": application_name,
                # Every statement here is short. With JIT on (PostgreSQL's default) a
                # claim whose estimate crosses jit_above_cost on a large outbox spent
                # ~24 ms compiling to run for 1.5 (docs/benchmarks.md, "Claims").
                "jit": "off",
                **(server_settings or {}),
            },
        },
    )


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker:  # type: ignore[type-arg]
    """The one session factory; sessions never outlive a batch or a task."""
    return async_sessionmaker(engine, expire_on_commit=False)


class KeptConnection:
    """One pooled connection, checked out once and kept for a hot loop's statements.

    A statement on it costs one round trip: no checkout, pre-ping, BEGIN or COMMIT (a
    single statement runs in its own implicit transaction). After a failure it is
    invalidated and the next ``driver()`` opens a new one, so a restarted server is
    picked up.
    """

    __slots__ = ("_conn", "_driver", "_engine")

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._conn: AsyncConnection | None = None
        self._driver: Any = None

    async def driver(self) -> Any:
        """The asyncpg connection (with the engine's codecs: jsonb decodes to dicts)."""
        if self._conn is None:
            conn = await self._engine.connect()
            try:
                self._driver = (await conn.get_raw_connection()).driver_connection
            except BaseException:
                await conn.close()
                raise
            self._conn = conn
        return self._driver

    async def close(self, *, broken: bool = False) -> None:
        conn, self._conn, self._driver = self._conn, None, None
        if conn is None:
            return
        with contextlib.suppress(Exception):  # already broken: the pool drops it
            if broken:
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
