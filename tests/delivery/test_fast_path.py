"""The fast path: ingest leases new deliveries to its own replica's workers as it inserts
them, by the rules of a claim (docs/delivery.md, "The fast path").

A row leased on insert has ``updated_at = created_at``: both are ``now()`` of the
transaction that inserted it, while a claim sets ``updated_at`` in a later one.
"""

from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from dispatcher.events.kinds import ChannelKind
from dispatcher.sinks.webhook import WebhookSink
from tests.delivery.harness import (
    Stack,
    StackFactory,
    event_to,
    webhook_channel,
    workers_of,
)
from tests.waiting import NotYet, wait_for

pytestmark = [pytest.mark.postgres, pytest.mark.rabbitmq]

MONITOR = ("webhook", "safety-monitor")


def monitor(sink: WebhookSink, **overrides: Any) -> dict[str, Any]:
    """The webhook channel with one endpoint; attempts long enough to look at."""
    return {
        "webhook": webhook_channel(
            sink.url,
            ["safety-monitor"],
            deadline_seconds=4.0,
            poll_interval=0.2,
            **overrides,
        )
    }


def leased_on_insert(row: Any) -> bool:
    return bool(row.status == "in_flight" and row.updated_at == row.created_at)


def unleased(row: Any) -> bool:
    return bool(
        row.status == "pending" and row.attempts == 0 and row.lease_owner is None
    )


async def until_sent(sink: WebhookSink, n: int) -> None:
    async def sent() -> bool | NotYet:
        return len(sink.received) >= n or NotYet(len(sink.received))

    await wait_for(sent, f"{n} requests at the sink", timeout=30)


async def leased_and_queued(
    s: Stack, sink: WebhookSink, events: int, leased: int, *, ahead: bool = False
) -> tuple[list[Any], list[Any]]:
    """Publish ``events`` to the monitor, whose first ``leased`` requests hang: those
    rows were leased on insert and sent, the others wait unleased, or with ``ahead``
    (an endpoint at its cap below the slots: a lead, docs/delivery.md) may be leased
    ahead by a claim, never sent. (ids, rows)"""
    sink.hang("/safety-monitor", times=leased)
    await s.wait_listening_and_swept()
    ids = await s.publish(*[event_to(MONITOR) for _ in range(events)])
    await until_sent(sink, leased)
    rows = await s.deliveries(ids)
    assert len(rows) == events
    assert sum(leased_on_insert(r) for r in rows) == leased
    others = [r for r in rows if not leased_on_insert(r)]
    assert all(unleased(r) or (ahead and r.status == "in_flight") for r in others)
    assert {r.webhook_id for r in sink.received} == {
        str(r.id) for r in rows if leased_on_insert(r)
    }
    return ids, rows


async def test_full_worker_pool_falls_back_to_the_queue(
    stack: StackFactory, webhook_sink: WebhookSink
) -> None:
    """Rows without a free slot are inserted unleased and claimed once slots free."""
    channels = monitor(webhook_sink, concurrency=2, critical_reserve=0)
    async with stack(channels=channels) as s:
        ids, rows = await leased_and_queued(s, webhook_sink, 5, 2)
        await s.wait_final(ids, count=5)
        assert s.delivery is not None
        assert s.delivery.workers[ChannelKind.WEBHOOK].fast == 2
    assert sorted(webhook_sink.accepted) == sorted(str(r.id) for r in rows)
    assert webhook_sink.duplicates() == []


async def test_per_endpoint_cap_holds_on_the_fast_path(
    stack: StackFactory, webhook_sink: WebhookSink
) -> None:
    """An endpoint gets at most its cap of new rows leased on insert; the rest wait,
    unleased or claimed ahead, none sent."""
    channels = monitor(webhook_sink, concurrency=8, max_inflight_per_recipient=2)
    async with stack(channels=channels) as s:
        ids, _ = await leased_and_queued(s, webhook_sink, 6, 2, ahead=True)
        await s.wait_final(ids, count=6)
    assert webhook_sink.duplicates() == []
    assert len(webhook_sink.accepted) == 6


async def test_critical_event_behind_a_low_severity_burst_is_sent_first(
    stack: StackFactory, webhook_sink: WebhookSink
) -> None:
    """With the general slots full and low rows queued, a critical row takes the reserved
    slot on the fast path and reaches the endpoint before the queued rows."""
    webhook_sink.hang("/safety-monitor")
    channels = monitor(webhook_sink, concurrency=4, critical_reserve=1)
    async with stack(channels=channels) as s:
        await s.wait_listening_and_swept()
        low = await s.publish(*[event_to(MONITOR, severity="low") for _ in range(20)])
        await until_sent(webhook_sink, 3)
        await s.wait_deliveries(
            lambda rows: len(rows) == 20, event_ids=low, what="20 low rows"
        )
        (critical,) = await s.publish(event_to(MONITOR, severity="critical"))
        await until_sent(webhook_sink, 4)
        (row,) = await s.deliveries([critical])
        assert leased_on_insert(row)
        assert webhook_sink.received[3].webhook_id == str(row.id)
        waiting = await s.deliveries(low)
        assert sum(unleased(r) for r in waiting) == 17
        webhook_sink.clear()


@pytest.mark.slow
async def test_fast_path_and_claims_on_two_replicas_never_send_a_row_twice(
    make_settings: Any,
    database: str,
    roomy_engine: AsyncEngine,
    cleanup_broker: None,
) -> None:
    """Two replicas lease on insert and claim (overflow, retries) the same stream: every
    delivery reaches its endpoint exactly once."""
    endpoints = ["crisis-line", "safety-monitor", "case-system"]
    async with WebhookSink(seed=5) as sink:
        sink.flaky("/crisis-line", 0.2)
        sink.flaky("/case-system", 0.2)
        sink.latency("/safety-monitor", 0.01, 0.1)
        channel = webhook_channel(sink.url, endpoints, concurrency=6)
        settings = make_settings(database, channels={"webhook": channel})
        replicas = [Stack(settings, roomy_engine) for _ in range(2)]
        async with replicas[0] as one, replicas[1]:
            await one.wait_listening_and_swept()
            workers = workers_of(replicas, ChannelKind.WEBHOOK)
            # One event at a time until each replica has leased some on insert: a
            # replica whose slots are busy with the other's overflow (claimed, or
            # claimed ahead) leases nothing on insert until they are done.
            ids: list[Any] = []
            while len(ids) < 20 and not all(w.fast > 0 for w in workers):
                ids += await one.publish(event_to(*[("webhook", n) for n in endpoints]))
                await one.wait_final(ids, count=3 * len(ids), timeout=60)
            events = [
                event_to(*[("webhook", n) for n in endpoints]) for _ in range(150)
            ]
            for start in range(0, 150, 10):
                ids += await one.publish(*events[start : start + 10])
            rows = await one.wait_final(ids, count=3 * len(ids), timeout=120)
    assert sink.duplicates() == []
    assert len(sink.accepted) == 3 * len(ids)
    assert all(w.fast > 0 for w in workers)
    # A fifth of two endpoints' tries fail: those rows, leased on insert, are retried by
    # a claim of either replica (as is any overflow).
    assert any(r.attempts > 1 for r in rows)
