"""Driver errors raised as is by asyncpg become the dispatcher's storage errors."""

import asyncpg
import pytest
from asyncpg.exceptions._base import DataError as InputDataError

from dispatcher.db.engine import wrap_db_errors
from dispatcher.errors import StorageConflict, StorageFault, StorageUnavailable


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (asyncpg.exceptions.UntranslatableCharacterError(), StorageConflict),
        (asyncpg.exceptions.UniqueViolationError(), StorageConflict),
        (InputDataError("invalid input for query argument $1"), StorageConflict),
        (asyncpg.exceptions.ConnectionDoesNotExistError(), StorageUnavailable),
        (asyncpg.exceptions.InternalClientError(), StorageUnavailable),
        (asyncpg.exceptions.AdminShutdownError(), StorageUnavailable),
        (ConnectionRefusedError(), StorageUnavailable),
        (asyncpg.exceptions.LockNotAvailableError(), StorageUnavailable),
        (asyncpg.exceptions.DeadlockDetectedError(), StorageUnavailable),
        (asyncpg.exceptions.IdleInTransactionSessionTimeoutError(), StorageUnavailable),
        (asyncpg.exceptions.QueryCanceledError(), StorageUnavailable),
        (asyncpg.exceptions.TooManyConnectionsError(), StorageUnavailable),
        (asyncpg.exceptions.SerializationError(), StorageUnavailable),
        (asyncpg.exceptions.UndefinedColumnError(), StorageFault),
        (asyncpg.exceptions.UndefinedTableError(), StorageFault),
        (asyncpg.exceptions.PostgresSyntaxError(), StorageFault),
        (asyncpg.exceptions.InsufficientPrivilegeError(), StorageFault),
    ],
    ids=[
        "nul",
        "unique",
        "encode",
        "gone",
        "internal",
        "shutdown",
        "refused",
        "lock_timeout",
        "deadlock",
        "idle_in_transaction",
        "statement_timeout",
        "too_many_connections",
        "serialization",
        "undefined_column",
        "undefined_table",
        "syntax",
        "privilege",
    ],
)
def test_raw_asyncpg_errors_are_translated(
    error: Exception, expected: type[Exception]
) -> None:
    """Data refusals are conflicts (not retried); outages are unavailability (retried);
    an error the server answers with that is neither (a schema or code bug) is a fault."""
    with pytest.raises(expected) as info, wrap_db_errors():
        raise error
    assert type(info.value) is expected
    assert "invalid input" not in str(info.value), "messages carry class names only"
