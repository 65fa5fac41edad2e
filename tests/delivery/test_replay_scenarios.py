"""Dead-letter replay end to end: a webhook endpoint down, its deliveries dead-lettered,
the endpoint back, and a replay that delivers each of them once (counted at the receiving
server by ``webhook-id``, which is the delivery id), through the real channel workers.

The issue asks for 500 dead letters; these tests use 60 per scenario to keep the suite's
time bounded on a shared two-core machine. Counting and once-only are the same checks.
"""

import asyncio
import time
import uuid
from collections import Counter
from datetime import datetime
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from dispatcher.app import build_replayer
from dispatcher.delivery.replayer import ReplayRunner
from dispatcher.outbox import dead, replays
from dispatcher.outbox.dead import DeadFilter
from dispatcher.sinks.webhook import WebhookSink
from tests.delivery.harness import Stack, StackFactory, event_to, webhook_channel
from tests.waiting import NotYet, wait_for

pytestmark = [pytest.mark.postgres, pytest.mark.rabbitmq]

N = 60


async def _driver(engine: AsyncEngine) -> Any:
    conn = await engine.connect()
    return conn, (await conn.get_raw_connection()).driver_connection


async def dead_lettered(
    s: Stack, sink: WebhookSink, endpoints: tuple[str, ...], n: int
) -> list[Any]:
    """``n`` events to each endpoint while they answer 400: every delivery dies."""
    for name in endpoints:
        sink.respond(f"/{name}", 400)
    events = [event_to(*(("webhook", e) for e in endpoints)) for _ in range(n)]
    ids = await s.publish(*events)
    rows = await s.wait_deliveries(
        lambda rows: (
            len(rows) == n * len(endpoints) and all(r.status == "dead" for r in rows)
        ),
        event_ids=ids,
        what="every delivery dead",
    )
    sink.clear()
    return rows


async def create(
    engine: AsyncEngine,
    where: DeadFilter,
    *,
    rate: float = 0.0,
    as_of: datetime | None = None,
) -> tuple[uuid.UUID, int]:
    """A replay of what ``where`` selects as of ``as_of`` (default now)."""
    conn, driver = await _driver(engine)
    try:
        async with driver.transaction():
            return await replays.create(
                driver,
                where,
                as_of=as_of or await dead.now(driver),
                by="tester",
                reason="endpoint back",
                rate=rate,
                max_age_seconds=None,
            )
    finally:
        await conn.close()


async def replay_row(engine: AsyncEngine, replay_id: uuid.UUID) -> replays.ReplayRow:
    conn, driver = await _driver(engine)
    try:
        row = await replays.get(driver, replay_id)
        assert row is not None
        return row
    finally:
        await conn.close()


async def wait_replay(
    engine: AsyncEngine, replay_id: uuid.UUID, check: Any, *, timeout: float = 60
) -> replays.ReplayRow:
    async def reached() -> replays.ReplayRow | NotYet:
        row = await replay_row(engine, replay_id)
        return row if check(row) else NotYet(row)

    return await wait_for(
        reached, f"replay {replay_id} to reach its state", timeout=timeout
    )


def webhook_ids(sink: WebhookSink, path: str) -> Counter[str]:
    return Counter(
        r.webhook_id for r in sink.received_on(path) if r.status == 200 and r.webhook_id
    )


def channels(sink: WebhookSink) -> dict[str, Any]:
    return {"webhook": webhook_channel(sink.url, ["east", "west"])}


async def test_a_filtered_replay_delivers_exactly_those_once(
    stack: StackFactory, webhook_sink: WebhookSink
) -> None:
    """After the endpoint is back, replaying one endpoint's dead letters delivers each once,
    the other endpoint's stay dead, and the attempts carry the replay's lineage."""
    async with stack(channels=channels(webhook_sink)) as s:
        rows = await dead_lettered(s, webhook_sink, ("east", "west"), N)
        east = {str(r.id) for r in rows if r.recipient == "east"}
        replay_id, total = await create(s.engine, DeadFilter(endpoints=("east",)))
        assert total == N
        row = await wait_replay(s.engine, replay_id, lambda r: r.status == "done")
    assert (row.requeued, row.delivered, row.failed_again, row.skipped) == (N, N, 0, 0)
    delivered = webhook_ids(webhook_sink, "/east")
    assert set(delivered) == east
    assert set(delivered.values()) == {1}
    assert webhook_ids(webhook_sink, "/west") == Counter()
    attempts = await s.attempts(uuid.UUID(next(iter(east))))
    assert [(a.lineage, a.replay_id) for a in attempts] == [
        ("initial", None),
        ("replay", replay_id),
    ]


async def test_a_replay_killed_half_way_is_resumed_and_sends_each_once(
    stack: StackFactory, webhook_sink: WebhookSink
) -> None:
    """A runner that dies mid-replay leaves a lease that expires; another runner finishes
    the replay and no delivery is sent twice."""
    async with stack(channels=channels(webhook_sink)) as s:
        rows = await dead_lettered(s, webhook_sink, ("east",), N)
        replay_id, _ = await create(
            s.engine, DeadFilter(channels=("webhook",)), rate=40
        )
        # The stack's own runner must not take it: stop it, then run ours.
        assert s.delivery is not None
        assert s.delivery.replayer is not None
        await s.delivery.replayer.stop()
        first = ReplayRunner(
            s.engine, owner="doomed", lease_seconds=1.0, only=replay_id
        )
        task = asyncio.create_task(first.run())
        await wait_replay(s.engine, replay_id, lambda r: r.requeued >= N // 3)
        task.cancel()  # dies between two statements; its lease stays until it expires
        await asyncio.gather(task, return_exceptions=True)
        stopped_at = (await replay_row(s.engine, replay_id)).requeued
        assert stopped_at < N
        second = build_replayer(s.settings, s.engine, owner="heir", only=replay_id)
        await second.run()  # returns once the replay is final
        row = await replay_row(s.engine, replay_id)
    assert (row.status, row.requeued, row.delivered) == ("done", N, N)
    delivered = webhook_ids(webhook_sink, "/east")
    assert set(delivered) == {str(r.id) for r in rows}
    assert set(delivered.values()) == {1}


async def test_cancel_stops_a_replay_within_a_second(
    stack: StackFactory, webhook_sink: WebhookSink
) -> None:
    """A cancel commits at once and the runner driving the replay lets go within a
    second of it; nothing more is requeued, and the requeued ones are still delivered."""
    async with stack(channels=channels(webhook_sink)) as s:
        await dead_lettered(s, webhook_sink, ("east",), N)
        replay_id, _ = await create(
            s.engine, DeadFilter(channels=("webhook",)), rate=10
        )
        assert s.delivery is not None
        assert s.delivery.replayer is not None
        await s.delivery.replayer.stop()  # ours drives it, so its exit can be timed
        runner = build_replayer(s.settings, s.engine, owner="runner", only=replay_id)
        task = asyncio.create_task(runner.run())
        await wait_replay(s.engine, replay_id, lambda r: r.requeued >= 3)
        conn, driver = await _driver(s.engine)
        started = time.monotonic()
        async with driver.transaction():
            cancelled = await replays.cancel(driver, replay_id, by="tester")
        await conn.close()
        # run() returns once its replay is final: after the cancel, and nothing after.
        await wait_for(task.done, "the runner to let go", timeout=1.0)
        stopped_in = time.monotonic() - started
        await task
        assert cancelled is not None
        requeued = cancelled.requeued
        await s.wait_deliveries(
            lambda rows: sum(r.status == "delivered" for r in rows) == requeued,
            what="the requeued ones delivered",
        )
        row = await replay_row(s.engine, replay_id)
        rows = await s.deliveries()
    assert stopped_in < 1.0
    assert (cancelled.status, cancelled.skipped) == ("cancelled", N - requeued)
    assert (row.status, row.requeued) == ("cancelled", requeued)
    assert sum(r.status == "dead" for r in rows) == N - requeued
    assert len(webhook_ids(webhook_sink, "/east")) == requeued
