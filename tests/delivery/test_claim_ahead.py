"""Claim-ahead: while critical rows wait for slots, a claim leases a bounded number more
than the free slots, and freed slots start them without a claim (delivery/ready.py)."""

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
    """One endpoint, eight slots, none reserved: a backlog waits for slots."""
    settings = {"concurrency": 8, "critical_reserve": 0, **overrides}
    return {"webhook": webhook_channel(sink.url, ["safety-monitor"], **settings)}


async def critical_backlog(s: Stack, sink: WebhookSink, events: int) -> list[Any]:
    """Publish ``events`` critical events to the monitor and wait until each is sent."""
    await s.wait_listening_and_swept()
    ids = await s.publish(
        *[event_to(MONITOR, severity="critical") for _ in range(events)]
    )
    return await s.wait_final(ids, count=events, timeout=60)


async def test_a_critical_backlog_takes_a_claim_per_several_rows(
    stack: StackFactory, webhook_sink: WebhookSink
) -> None:
    """A backlog of critical rows is claimed several rows a statement, not one per
    freed slot (twice the slots wait claimed ahead: 6 or more rows a claim with 8
    slots, where as many as the slots gave 4-5), each row sent once."""
    webhook_sink.latency("/safety-monitor", 0.005, 0.02)
    async with stack(channels=monitor(webhook_sink)) as s:
        rows = await critical_backlog(s, webhook_sink, 120)
        assert s.delivery is not None
        worker = s.delivery.workers[ChannelKind.WEBHOOK]
        claimed, claims = worker.claimed, worker.claims
    assert {r.status for r in rows} == {"delivered"}
    assert claimed + worker.fast == 120
    assert claims * 6 <= claimed, (claims, claimed)
    assert webhook_sink.duplicates() == []


async def test_rows_claimed_ahead_too_long_are_given_back_not_started(
    stack: StackFactory, webhook_sink: WebhookSink
) -> None:
    """With almost no lease beyond one try, a row claimed ahead is too old to start by
    the time a slot frees: it is given back (pending, its attempt refunded) and sent
    once, by a later claim."""
    webhook_sink.latency("/safety-monitor", 0.05, 0.1)
    channels = monitor(webhook_sink, deadline_seconds=2.0, lease_seconds=2.02)
    async with stack(channels=channels) as s:
        rows = await critical_backlog(s, webhook_sink, 40)
        assert s.delivery is not None
        worker = s.delivery.workers[ChannelKind.WEBHOOK]
        given_back = worker.given_back
    assert given_back > 0
    assert {r.status for r in rows} == {"delivered"}
    assert {r.attempts for r in rows} == {1}
    assert webhook_sink.duplicates() == []
    assert len(webhook_sink.accepted) == 40


@pytest.mark.slow
async def test_two_replicas_claiming_ahead_never_send_a_row_twice(
    make_settings: Any,
    database: str,
    roomy_engine: AsyncEngine,
    cleanup_broker: None,
) -> None:
    """Two replicas claim a critical backlog ahead (and retry a fifth of it): every
    delivery reaches its endpoint exactly once."""
    endpoints = ["crisis-line", "safety-monitor"]
    async with WebhookSink(seed=7) as sink:
        sink.flaky("/crisis-line", 0.2)
        sink.latency("/safety-monitor", 0.005, 0.05)
        channel = webhook_channel(
            sink.url, endpoints, concurrency=6, critical_reserve=0
        )
        settings = make_settings(database, channels={"webhook": channel})
        replicas = [Stack(settings, roomy_engine) for _ in range(2)]
        async with replicas[0] as one, replicas[1]:
            await one.wait_listening_and_swept()
            events = [
                event_to(*[("webhook", n) for n in endpoints], severity="critical")
                for _ in range(150)
            ]
            ids = await one.publish(*events)
            rows = await one.wait_final(ids, count=300, timeout=120)
            workers = workers_of(replicas, ChannelKind.WEBHOOK)
    assert sink.duplicates() == []
    assert len(sink.accepted) == 300
    assert {r.status for r in rows} == {"delivered"}
    assert sum(w.buffered for w in workers) > 0


async def test_a_new_critical_row_waits_behind_rows_claimed_ahead(
    stack: StackFactory, webhook_sink: WebhookSink
) -> None:
    """While critical rows claimed ahead wait for slots, a new critical event is not
    leased on insert ahead of them (FIFO within a priority); low rows are never claimed
    ahead."""
    webhook_sink.latency("/safety-monitor", 0.03, 0.06)
    async with stack(channels=monitor(webhook_sink)) as s:
        await s.wait_listening_and_swept()
        low = await s.publish(*[event_to(MONITOR, severity="low") for _ in range(30)])
        await s.wait_final(low, count=30, timeout=60)
        assert s.delivery is not None
        worker = s.delivery.workers[ChannelKind.WEBHOOK]
        assert worker.buffered == 0
        backlog = await s.publish(
            *[event_to(MONITOR, severity="critical") for _ in range(200)]
        )

        async def claimed_ahead() -> bool | NotYet:
            return worker.buffered > 0 or NotYet(worker.buffered)

        await wait_for(claimed_ahead, "rows claimed ahead", timeout=30)
        (late,) = await s.publish(event_to(MONITOR, severity="critical"))
        rows = await s.wait_final([*backlog, late], count=201, timeout=90)
    (row,) = [r for r in rows if r.event_id == late]
    assert row.updated_at != row.created_at  # claimed, not leased on insert
    assert webhook_sink.duplicates() == []
