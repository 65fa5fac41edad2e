"""The outbox waker: LISTEN from one connection, wake the named worker, come back after a loss."""

import asyncio

import asyncpg
import pytest

from dispatcher.outbox.claims import OUTBOX_NOTIFY_CHANNEL
from dispatcher.outbox.waker import Waker, asyncpg_dsn

pytestmark = pytest.mark.postgres


async def _notify(dsn: str, payload: str) -> None:
    conn = await asyncpg.connect(dsn, timeout=5)
    try:
        await conn.execute("SELECT pg_notify($1, $2)", OUTBOX_NOTIFY_CHANNEL, payload)
    finally:
        await conn.close()


async def _terminate_listener(dsn: str) -> int:
    """Kill the waker's backend the way a server restart or a cut link would."""
    conn = await asyncpg.connect(dsn, timeout=5)
    try:
        killed: int = await conn.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            " AND backend_type = 'client backend'"
        )
    finally:
        await conn.close()
    return killed


async def test_waker_wakes_the_named_worker(database: str) -> None:
    """A NOTIFY carrying a channel kind sets that worker's event and no other."""
    email, sms = asyncio.Event(), asyncio.Event()
    waker = Waker(database, {"email": email, "sms": sms})
    await waker.start()
    try:
        await asyncio.wait_for(waker.connected.wait(), 10)
        email.clear()
        sms.clear()
        await _notify(asyncpg_dsn(database), "email")
        await asyncio.wait_for(email.wait(), 10)
        assert not sms.is_set()
    finally:
        await waker.stop()


async def test_waker_listens_again_after_its_connection_dies(database: str) -> None:
    """After its backend is killed the waker reconnects (with backoff), wakes every
    worker to catch up, and receives notifications again."""
    email = asyncio.Event()
    waker = Waker(database, {"email": email}, reconnect_max=0.5)
    await waker.start()
    dsn = asyncpg_dsn(database)
    try:
        await asyncio.wait_for(waker.connected.wait(), 10)
        assert await _terminate_listener(dsn) == 1
        # The loss is noticed by the keep-alive query (every 5 s, bounded by 5 s), then
        # a jittered reconnect: generous on a loaded machine.
        async with asyncio.timeout(45):
            while waker.connected.is_set():
                await asyncio.sleep(0.05)
            email.clear()
            await waker.connected.wait()
        await asyncio.wait_for(email.wait(), 5)  # the catch-up wake-up
        email.clear()
        await _notify(dsn, "email")
        await asyncio.wait_for(email.wait(), 10)
    finally:
        await waker.stop()


def test_asyncpg_dsn_speaks_asyncpg_for_tls() -> None:
    """``?ssl=require`` (SQLAlchemy's spelling) reaches asyncpg as ``sslmode``, so the
    LISTEN connection can use TLS like the pool does."""
    dsn = asyncpg_dsn(
        "postgresql+asyncpg://u:p@db.example:5432/d?ssl=require&target_session_attrs=primary"
    )
    assert dsn.startswith("postgresql://u:p@db.example:5432/d?")
    assert "sslmode=require" in dsn
    assert "target_session_attrs=primary" in dsn
    assert "ssl=" not in dsn.replace("sslmode=", "")
