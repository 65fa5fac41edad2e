"""The outbox waker: LISTEN from one connection, wake the named worker, come back after a loss."""

import asyncio

import asyncpg
import pytest

from dispatcher.outbox.claims import OUTBOX_NOTIFY_CHANNEL
from dispatcher.outbox.waker import Notice, Waker, asyncpg_dsn

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
    """A NOTIFY carrying a channel kind sets that worker's event and no other, and
    names no recipient (anything of the channel may be new)."""
    email, sms = Notice(), Notice()
    waker = Waker(database, {"email": email, "sms": sms})
    await waker.start()
    try:
        await asyncio.wait_for(waker.connected.wait(), 10)
        email.event.clear()
        sms.event.clear()
        sms.take()
        await _notify(asyncpg_dsn(database), "email")
        await asyncio.wait_for(email.event.wait(), 10)
        assert not sms.event.is_set()
        assert email.take() is None
    finally:
        await waker.stop()


async def test_waker_collects_the_recipients_notifications_name(database: str) -> None:
    """Recipients after the kind, one per line, are collected until the worker takes
    them; a notification naming none makes it anything again."""
    webhook = Notice()
    waker = Waker(database, {"webhook": webhook})
    await waker.start()
    dsn = asyncpg_dsn(database)
    try:
        await asyncio.wait_for(waker.connected.wait(), 10)
        webhook.take()  # the catch-up on connecting
        webhook.event.clear()
        await _notify(dsn, "webhook\nmonitor-a\nmonitor-b")
        await asyncio.wait_for(webhook.event.wait(), 10)
        webhook.event.clear()
        await _notify(dsn, "webhook\nmonitor-c")
        await asyncio.wait_for(webhook.event.wait(), 10)
        assert webhook.take() == {"monitor-a", "monitor-b", "monitor-c"}
        assert webhook.take() == frozenset()
        webhook.event.clear()
        await _notify(dsn, "webhook\nmonitor-a")
        await asyncio.wait_for(webhook.event.wait(), 10)
        webhook.event.clear()
        await _notify(dsn, "webhook")
        await asyncio.wait_for(webhook.event.wait(), 10)
        assert webhook.take() is None
    finally:
        await waker.stop()


async def test_waker_listens_again_after_its_connection_dies(database: str) -> None:
    """After its backend is killed the waker reconnects (with backoff), wakes every
    worker to catch up, and receives notifications again."""
    notice = Notice()
    email = notice.event
    waker = Waker(database, {"email": notice}, reconnect_max=0.5)
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
