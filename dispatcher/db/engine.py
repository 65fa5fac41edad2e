"""The connection pool, and the one place driver errors become dispatcher errors."""

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import asyncpg
from asyncpg.exceptions._base import DataError as InputDataError
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    async_sessionmaker,
    create_async_engine,
)

from dispatcher.db.connection import connect_options
from dispatcher.errors import StorageConflict, StorageFault, StorageUnavailable

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
        if isinstance(cause, asyncpg.exceptions.PostgresError) and _is_fault(cause):
            raise StorageFault(f"PostgreSQL error ({_name(cause)})") from None
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
        if _is_fault(exc):
            raise StorageFault(f"PostgreSQL error ({_name(exc)})") from None
        raise StorageUnavailable(f"PostgreSQL is unavailable ({_name(exc)})") from None


#: SQLSTATE classes that mean "not now" (connection, transaction rollback, insufficient
#: resources, object not in prerequisite state, operator intervention, system error).
#: Any other error the server answers with is a fault: a bug in the schema or our SQL.
_OUTAGE_CLASSES = frozenset({"08", "40", "53", "55", "57", "58"})


def _is_fault(exc: BaseException) -> bool:
    sqlstate = getattr(exc, "sqlstate", None)
    return isinstance(sqlstate, str) and sqlstate[:2] not in _OUTAGE_CLASSES


def _name(exc: BaseException) -> str:
    sqlstate = getattr(exc, "sqlstate", None)
    return (
        f"{type(exc).__name__}, SQLSTATE {sqlstate}" if sqlstate else type(exc).__name__
    )
