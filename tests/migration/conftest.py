"""An empty database (no schema at all) per test, for the migrations to build."""

import uuid
from collections.abc import AsyncIterator

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from dispatcher.db.engine import create_engine
from tests.conftest import _admin, database_url, drop_database


@pytest.fixture
async def empty_database(template_database: str) -> AsyncIterator[str]:
    """The URL of a new, empty database, dropped after the test."""
    # template_database: skips (or fails in CI) when PostgreSQL is unreachable.
    name = f"dispatcher_m_{uuid.uuid4().hex[:12]}"
    await _admin(f'CREATE DATABASE "{name}"')
    yield database_url(name)
    await drop_database(name)


@pytest.fixture
async def empty_engine(empty_database: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(empty_database, pool_size=1)
    yield engine
    await engine.dispose()
