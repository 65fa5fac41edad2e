"""Ingest under real faults: PostgreSQL outage, SIGKILL and SIGTERM of the dispatcher."""

import asyncio
import json
import logging
import signal
import time
from collections.abc import AsyncIterator, Iterator

import pytest
from sqlalchemy import text

from dispatcher import topology
from dispatcher.db.engine import create_engine
from dispatcher.db.migrate import upgrade
from dispatcher.publisher import Publisher
from dispatcher.testing import event_bytes
from tests.acceptance.faults import PrivatePostgres
from tests.conftest import AMQP_URL
from tests.integration.test_ingest_consumer import (
    count,
    queue_depth,
    wait_count,
    wait_queue_empty,
)
from tests.tcp_relay import TcpRelay
from tests.waiting import NotYet, wait_for

pytestmark = [
    pytest.mark.slow,
    pytest.mark.postgres,
    pytest.mark.rabbitmq,
    pytest.mark.usefixtures("cleanup_broker"),
]

RECIPIENTS = [
    {"channel": "email", "to": "team@example.org"},
    {"channel": "sms", "to": "+15551234567"},
]


def events(n: int) -> list[bytes]:
    return [event_bytes(recipients=RECIPIENTS) for _ in range(n)]


def env_for(names: dict[str, str], database_url: str) -> dict[str, str]:
    return {
        "DISPATCHER_DATABASE_URL": database_url,
        "DISPATCHER_AMQP_URL": AMQP_URL,
        "DISPATCHER_EXCHANGE": names["exchange"],
        "DISPATCHER_QUEUE_PREFIX": names["queue_prefix"],
        "DISPATCHER_INGEST__STORAGE_RETRY_MAX_DELAY": "1",
        # serve runs the audit API too: a free port each, so replicas never collide.
        "DISPATCHER_API__PORT": "0",
    }


async def publish_paced(
    exchange: str,
    bodies: list[bytes],
    rate: float,
    on_count: dict[int, asyncio.Event] | None = None,
    published: list[bytes] | None = None,
) -> None:
    """Publish at a steady rate with confirms; set on_count[n] after the n-th publish and
    append each confirmed body to ``published``."""
    async with Publisher(AMQP_URL, exchange) as publisher:
        start = time.monotonic()
        for n, body in enumerate(bodies, 1):
            await publisher.publish(
                body, "crisis.detected", message_id=json.loads(body)["event_id"]
            )
            if published is not None:
                published.append(body)
            if on_count and n in on_count:
                on_count[n].set()
            delay = start + n / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)


@pytest.fixture
def private_pg() -> Iterator[PrivatePostgres]:
    pg = PrivatePostgres()
    pg.start()
    yield pg
    pg.destroy()


@pytest.fixture
async def private_engine(private_pg: PrivatePostgres) -> AsyncIterator[object]:
    engine = create_engine(private_pg.url, pool_size=2)
    await upgrade(engine)
    yield engine
    await engine.dispose()


@pytest.fixture
async def fresh_db(database: str) -> str:
    return database


async def stored_of(engine, event_ids: list[str], timeout: float) -> int:
    """How many of these events are stored, once all are (the test fails if they are
    not within ``timeout``)."""
    query = text("SELECT count(*) FROM events WHERE id = ANY(CAST(:ids AS uuid[]))")
    stored = -1

    async def all_stored() -> bool:
        nonlocal stored
        async with engine.connect() as conn:
            stored = (await conn.execute(query, {"ids": event_ids})).scalar_one()
        return bool(stored == len(event_ids))

    await wait_for(all_stored, f"{len(event_ids)} events stored", timeout=timeout)
    return stored


@pytest.mark.timeout(240)
async def test_postgres_outage_mid_stream_loses_nothing(
    names, private_pg, private_engine, start, tmp_path, amqp
) -> None:
    """PostgreSQL stopped for 12 s in a 2,000-event stream: all stored once, DLQ empty."""
    d = await start(env_for(names, private_pg.url), tmp_path / "serve.log")
    marks = {500: asyncio.Event()}
    publisher = asyncio.create_task(
        publish_paced(names["exchange"], events(2000), rate=200, on_count=marks)
    )
    await marks[500].wait()
    await asyncio.to_thread(private_pg.stop, "fast")
    await asyncio.sleep(12)
    await asyncio.to_thread(private_pg.start)
    await publisher
    assert (
        await wait_count(
            private_engine, "SELECT count(*) FROM events", 2000, timeout=90
        )
        == 2000
    )
    assert await count(private_engine, "SELECT count(*) FROM deliveries") == 4000
    assert (
        await count(
            private_engine,
            "SELECT count(*) FROM audit_log WHERE kind = 'event.received'",
        )
        == 2000
    )
    assert await count(private_engine, "SELECT count(*) FROM rejected_messages") == 0
    prefix = names["queue_prefix"]
    await wait_queue_empty(amqp, topology.ingest_queue(prefix))
    assert await queue_depth(amqp, topology.ingest_dlq(prefix)) == 0
    assert d.process.poll() is None, "the dispatcher must ride out the outage"
    log = d.log_path.read_text()
    assert log.index("dispatcher.ingest.storage_unavailable") < log.index(
        "dispatcher.ingest.storage_recovered"
    )


@pytest.mark.timeout(240)
async def test_sigkill_mid_stream_then_restart_stores_every_event_once(
    names, fresh_db, engine, start, tmp_path, amqp
) -> None:
    """A dispatcher killed with SIGKILL mid-stream and restarted stores every event exactly once."""
    env = env_for(names, fresh_db)
    first = await start(env, tmp_path / "first.log")
    publisher = asyncio.create_task(
        publish_paced(names["exchange"], events(2000), rate=400)
    )
    assert (
        await wait_count(engine, "SELECT count(*) FROM events", 300, timeout=60) >= 300
    )
    first.signal(signal.SIGKILL)
    first.wait(10)
    stored_at_kill = await count(engine, "SELECT count(*) FROM events")
    assert stored_at_kill < 2000, "the kill must land mid-stream"
    await start(env, tmp_path / "second.log")
    await publisher
    assert (
        await wait_count(engine, "SELECT count(*) FROM events", 2000, timeout=90)
        == 2000
    )
    assert await count(engine, "SELECT count(*) FROM deliveries") == 4000
    assert (
        await count(
            engine, "SELECT count(*) FROM audit_log WHERE kind = 'event.received'"
        )
        == 2000
    )
    await wait_queue_empty(amqp, topology.ingest_queue(names["queue_prefix"]))


@pytest.mark.timeout(240)
async def test_sigterm_acks_what_was_committed_and_exits_zero(
    names, fresh_db, engine, start, tmp_path, amqp
) -> None:
    """SIGTERM: stop consuming, commit and ack in-flight work, exit 0; nothing acked unstored."""
    env = env_for(names, fresh_db)
    first = await start(env, tmp_path / "first.log")
    bodies = events(1500)
    publisher = asyncio.create_task(publish_paced(names["exchange"], bodies, rate=500))
    assert (
        await wait_count(engine, "SELECT count(*) FROM events", 200, timeout=60) >= 200
    )
    first.signal(signal.SIGTERM)
    assert await asyncio.to_thread(first.wait, 40) == 0
    await publisher
    queue = topology.ingest_queue(names["queue_prefix"])

    # stored + still queued == published: no committed message left unacked (it would be
    # counted twice) and no unstored message acked (it would be missing).
    async def accounted_for() -> bool | NotYet:
        stored = await count(engine, "SELECT count(*) FROM events")
        total = stored + await queue_depth(amqp, queue)
        return total == len(bodies) or NotYet({"stored": stored, "total": total})

    await wait_for(accounted_for, "stored + queued == published", timeout=20)
    assert "dispatcher.ingest.stopped" in first.log_path.read_text()
    await start(env, tmp_path / "second.log")
    assert await wait_count(
        engine, "SELECT count(*) FROM events", len(bodies), timeout=60
    ) == len(bodies)
    assert await count(
        engine, "SELECT count(*) FROM audit_log WHERE kind = 'event.received'"
    ) == len(bodies)


@pytest.mark.timeout(300)
async def test_path_to_postgres_cut_half_open_mid_transaction_recovers_after_heal(
    names, private_pg, private_engine, start, tmp_path, amqp, record_property
) -> None:
    """PostgreSQL's path black-holed while a writer's transaction holds inserted rows
    (the server keeps the session half-open) and healed 30 s later: ingest catches up
    within 30 s of the heal, and every event is stored exactly once."""
    async with TcpRelay("127.0.0.1", private_pg.port) as relay:
        through_relay = private_pg.url.replace(
            f":{private_pg.port}/", f":{relay.port}/"
        )
        d = await start(env_for(names, through_relay), tmp_path / "serve.log")
        bodies = events(2250)
        published: list[bytes] = []
        # Deterministic: the path goes dark the moment PostgreSQL reports the first
        # INSERT of a batch, before the writer hears of it, let alone sends COMMIT.
        relay.blackhole_on(b"INSERT 0 ")
        publisher = asyncio.create_task(
            publish_paced(names["exchange"], bodies, rate=50, published=published)
        )
        await asyncio.wait_for(relay.blackholed.wait(), 30)
        # The server's view: a session idle in its transaction, holding the rows.
        assert (
            await wait_count(
                private_engine,
                "SELECT count(*) FROM pg_stat_activity WHERE state = 'idle in transaction'"
                " AND backend_xid IS NOT NULL",
                1,
                timeout=5,
            )
            >= 1
        )
        await asyncio.sleep(30)  # the outage itself
        relay.heal()
        healed = time.monotonic()
        before_heal = [json.loads(body)["event_id"] for body in published]
        caught_up = await stored_of(private_engine, before_heal, timeout=30)
        recovery = time.monotonic() - healed
        assert caught_up == len(before_heal), (
            f"{caught_up} of the {len(before_heal)} events published before the heal"
            " stored 30 s after it"
        )
        await publisher
        n = len(bodies)
        assert await wait_count(private_engine, "SELECT count(*) FROM events", n) == n
        # Each event once, with its two deliveries once: no write was applied twice.
        assert await count(private_engine, "SELECT count(*) FROM deliveries") == 2 * n
        assert (
            await count(
                private_engine,
                "SELECT count(*) FROM (SELECT event_id FROM deliveries"
                " GROUP BY event_id HAVING count(*) <> 2) AS odd",
            )
            == 0
        )
        assert (
            await count(
                private_engine,
                "SELECT count(*) FROM audit_log WHERE kind = 'event.received'",
            )
            == n
        )
        prefix = names["queue_prefix"]
        deadline = time.monotonic() + 10
        while await queue_depth(amqp, topology.ingest_queue(prefix)) and (
            time.monotonic() < deadline
        ):
            await asyncio.sleep(0.2)
        assert await queue_depth(amqp, topology.ingest_queue(prefix)) == 0
        assert await queue_depth(amqp, topology.ingest_dlq(prefix)) == 0
        assert d.process.poll() is None
        record_property("recovery_seconds", round(recovery, 1))
        logging.getLogger(__name__).info(
            "the %d events published before the heal stored %.1f s after it",
            len(before_heal),
            recovery,
        )
