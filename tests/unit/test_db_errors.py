"""Driver errors raised as is by asyncpg become the dispatcher's storage errors."""

import asyncpg
import pytest
from asyncpg.exceptions._base import DataError as InputDataError

from dispatcher.db.engine import wrap_db_errors
from dispatcher.errors import StorageConflict, StorageUnavailable


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
    ],
)
def test_raw_asyncpg_errors_are_translated(
    error: Exception, expected: type[Exception]
) -> None:
    """Data refusals are conflicts (not retried); everything else is unavailability (retried)."""
    with pytest.raises(expected) as info, wrap_db_errors():
        raise error
    assert "invalid input" not in str(info.value), "messages carry class names only"
