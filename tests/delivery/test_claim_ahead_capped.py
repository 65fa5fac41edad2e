"""Claim-ahead for recipients at their cap: rows claimed ahead are leased, not in flight,
so they do not count against ``max_inflight_per_recipient``; they start only when a slot
is free and their endpoint has room, without holding up other endpoints' rows
(delivery/ready.py)."""

from typing import Any

import pytest

from dispatcher.sinks.webhook import WebhookSink
from tests.delivery.harness import StackFactory, event_to, webhook_channel, worker_of
from tests.waiting import NotYet, wait_for

pytestmark = [pytest.mark.postgres, pytest.mark.rabbitmq]

SLOW, FAST = ("webhook", "slow"), ("webhook", "fast")


def capped(sink: WebhookSink, names: list[str], cap: int, **more: Any) -> Any:
    """Eight slots, none reserved, each endpoint capped at ``cap``."""
    settings = {
        "concurrency": 8,
        "critical_reserve": 0,
        "max_inflight_per_recipient": cap,
        **more,
    }
    return {"webhook": webhook_channel(sink.url, names, **settings)}


def critical(*to: tuple[str, str], events: int) -> list[dict[str, Any]]:
    return [event_to(*to, severity="critical") for _ in range(events)]


@pytest.mark.parametrize(
    "cap",
    [
        pytest.param(8, id="cap-equals-the-slots"),
        # Below the slots one endpoint never fills them: a lead (delivery/leads.py).
        pytest.param(4, id="cap-below-the-slots"),
    ],
)
async def test_an_endpoint_at_its_cap_is_claimed_several_rows_a_claim(
    stack: StackFactory, webhook_sink: WebhookSink, cap: int
) -> None:
    """One endpoint with a critical backlog, its cap equal to the worker's slots or
    below them: its rows are claimed several a statement (not one claim per attempt or
    two that ended), never more than the cap at the receiver at once, each sent once."""
    webhook_sink.latency("/monitor", 0.005, 0.02)
    async with stack(channels=capped(webhook_sink, ["monitor"], cap)) as s:
        await s.wait_listening_and_swept()
        ids = await s.publish(*critical(("webhook", "monitor"), events=120))
        rows = await s.wait_final(ids, count=120, timeout=60)
        worker = worker_of(s)
        claimed, claims, fast = worker.claimed, worker.claims, worker.fast
    assert {r.status for r in rows} == {"delivered"}
    assert claimed + fast == 120
    assert claims * 3 <= claimed, (claims, claimed)
    assert webhook_sink.peak_concurrent["/monitor"] <= cap
    assert webhook_sink.duplicates() == []
    assert len(webhook_sink.accepted) == 120


async def test_rows_claimed_ahead_never_exceed_the_cap_at_the_receiver(
    stack: StackFactory, webhook_sink: WebhookSink
) -> None:
    """Two endpoints, each capped at half the slots, both with a critical backlog of
    slow responses: rows are claimed ahead for endpoints at their cap, and neither
    endpoint ever sees more than its cap of requests at once."""
    for path in ("/slow", "/fast"):
        webhook_sink.latency(path, 0.02, 0.05)
    async with stack(channels=capped(webhook_sink, ["slow", "fast"], 4)) as s:
        await s.wait_listening_and_swept()
        ids = await s.publish(*critical(SLOW, FAST, events=80))
        rows = await s.wait_final(ids, count=160, timeout=90)
        buffered = worker_of(s).buffered
    assert {r.status for r in rows} == {"delivered"}
    assert buffered > 0
    assert webhook_sink.peak_concurrent["/slow"] <= 4
    assert webhook_sink.peak_concurrent["/fast"] <= 4
    assert webhook_sink.duplicates() == []
    assert len(webhook_sink.accepted) == 160


async def test_an_endpoint_at_its_cap_does_not_hold_up_another_ones_ready_rows(
    stack: StackFactory, webhook_sink: WebhookSink
) -> None:
    """While an endpoint's attempts hang at its cap with rows claimed ahead waiting in
    front, another endpoint's rows claimed behind them start and are delivered."""
    webhook_sink.hang("/slow")
    # Hung attempts outlast the fast endpoint's backlog (a try ends at its deadline).
    channels = capped(
        webhook_sink, ["slow", "fast"], 4, deadline_seconds=30.0, lease_seconds=90.0
    )
    async with stack(channels=channels) as s:
        await s.wait_listening_and_swept()
        slow = await s.publish(*critical(SLOW, events=20))

        async def slow_at_cap() -> bool | NotYet:
            n = len(webhook_sink.received_on("/slow"))
            return n == 4 or NotYet(n)

        await wait_for(slow_at_cap, "the slow endpoint at its cap", timeout=30)
        fast = await s.publish(*critical(FAST, events=30))
        await s.wait_final(fast, count=30, timeout=60)
        # The slow endpoint's rows claimed ahead wait, leased, in front of them.
        leased = [r for r in await s.deliveries(slow) if r.status == "in_flight"]
        assert len(webhook_sink.received_on("/slow")) == 4
        assert len(leased) > 4
        webhook_sink.clear("/slow")
        webhook_sink.release()
        rows = await s.wait_final([*slow, *fast], count=50, timeout=60)
    assert {r.status for r in rows} == {"delivered"}
    assert webhook_sink.peak_concurrent["/slow"] <= 4
    assert webhook_sink.duplicates() == []
