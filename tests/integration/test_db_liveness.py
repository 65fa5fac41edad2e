"""Dead connections to PostgreSQL are found by the dispatcher itself, whatever the server's
configuration: keepalive on both sides, a server that ends a session idle in a
transaction, and a watched unit of work that fails fast on a half-open connection."""

import asyncio
import socket
import time

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from structlog.testing import capture_logs

from dispatcher.db import connection as db
from dispatcher.db.engine import create_engine
from dispatcher.db.kept import PROBE_INTERVAL, KeptConnection
from dispatcher.errors import StorageUnavailable
from tests.tcp_relay import TcpRelay

pytestmark = pytest.mark.postgres


async def test_connections_carry_dead_peer_detection(engine) -> None:
    """A pooled connection's socket has TCP keepalive and TCP_USER_TIMEOUT, and its
    session asks the server to probe us and to end a transaction left idle."""
    link = KeptConnection(engine)
    try:
        driver = await link.driver()
        sock = driver._transport.get_extra_info("socket")
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        tcp = {
            socket.TCP_KEEPIDLE: db.KEEPALIVE_IDLE,
            socket.TCP_KEEPINTVL: db.KEEPALIVE_INTERVAL,
            socket.TCP_KEEPCNT: db.KEEPALIVE_COUNT,
            socket.TCP_USER_TIMEOUT: db.TCP_USER_TIMEOUT_MS,
        }
        for option, number in tcp.items():
            assert sock.getsockopt(socket.IPPROTO_TCP, option) == number
        session = {
            "idle_in_transaction_session_timeout": db.IDLE_IN_TRANSACTION_TIMEOUT,
            "tcp_keepalives_idle": str(db.KEEPALIVE_IDLE),
            "tcp_keepalives_interval": str(db.KEEPALIVE_INTERVAL),
            "tcp_keepalives_count": str(db.KEEPALIVE_COUNT),
        }
        for name, value in session.items():
            assert await driver.fetchval(f"SHOW {name}") == value
    finally:
        await link.close()


async def test_half_open_connection_fails_fast_and_the_server_frees_its_locks(
    engine, database
) -> None:
    """A connection cut half-open inside a transaction (the path forgets it; new ones
    work) fails a watched unit of work in seconds, not the command timeout, and the
    server ends the abandoned session, so the rows it locked are free again."""
    async with engine.begin() as conn:
        await conn.execute(text("CREATE TABLE held (id int PRIMARY KEY)"))
    url = make_url(database)
    assert url.host is not None
    assert url.port is not None
    async with TcpRelay(url.host, url.port) as relay:
        through_relay = create_engine(
            url.set(port=relay.port).render_as_string(hide_password=False),
            pool_size=2,
        )
        link = KeptConnection(through_relay)
        relay.blackhole_on(b"INSERT 0 ")

        async def forget_the_cut_path() -> None:
            await relay.blackholed.wait()
            relay.heal()

        healer = asyncio.create_task(forget_the_cut_path())
        started = time.monotonic()
        try:
            with capture_logs() as logs, pytest.raises(StorageUnavailable):
                async with link.watched() as conn, conn.transaction():
                    await conn.execute("INSERT INTO held VALUES (1)")
            failed_after = time.monotonic() - started
            await link.close(broken=True)
            # The abandoned session still holds the row (the relay keeps its side of
            # the cut open); the server ends it, and the same insert goes in.
            async with asyncio.timeout(30), engine.begin() as conn:
                await conn.execute(text("INSERT INTO held VALUES (1)"))
            freed_after = time.monotonic() - started
        finally:
            healer.cancel()
            await asyncio.gather(healer, return_exceptions=True)
            await through_relay.dispose()
    assert failed_after < 2 * PROBE_INTERVAL + 2, failed_after
    assert [
        e["reason"] for e in logs if e["event"] == "dispatcher.db.connection_dead"
    ] == ["session_idle"]
    idle_timeout = float(db.IDLE_IN_TRANSACTION_TIMEOUT.removesuffix("s"))
    assert idle_timeout <= freed_after < idle_timeout + 5, freed_after
