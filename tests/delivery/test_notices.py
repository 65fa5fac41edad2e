"""Notifications that name only endpoints waiting for their cap start no claim; one that
names another endpoint does (outbox/waker.py ``Notice``, delivery/worker.py)."""

import pytest

from dispatcher.sinks.webhook import WebhookSink
from tests.delivery.harness import StackFactory, event_to
from tests.delivery.test_claim_ahead_capped import FAST, SLOW, capped, worker_of
from tests.waiting import NotYet, wait_for

pytestmark = [pytest.mark.postgres, pytest.mark.rabbitmq]


async def test_a_notification_for_an_endpoint_at_its_cap_waits_for_its_refill(
    stack: StackFactory, webhook_sink: WebhookSink
) -> None:
    """New rows of an endpoint whose attempts hang at its cap start no claim (its
    attempts ending will); a new row of another endpoint is sent at once."""
    webhook_sink.hang("/slow")
    # No poll while the test watches the claims: only notifications and freed slots.
    channels = capped(
        webhook_sink,
        ["slow", "fast"],
        2,
        deadline_seconds=30.0,
        lease_seconds=90.0,
        poll_interval=60.0,
    )
    async with stack(channels=channels) as s:
        await s.wait_listening_and_swept()
        worker = worker_of(s)
        slow = await s.publish(*[event_to(SLOW, severity="low") for _ in range(6)])

        async def slow_at_cap() -> bool | NotYet:
            n = len(webhook_sink.received_on("/slow"))
            return n == 2 or NotYet(n)

        await wait_for(slow_at_cap, "the slow endpoint at its cap", timeout=30)
        await s.wait_deliveries(
            lambda rows: len(rows) == 6, event_ids=slow, what="six rows stored"
        )
        claims, deferred = worker.claims, worker.notices_deferred
        more = await s.publish(*[event_to(SLOW, severity="low") for _ in range(3)])

        async def deferred_notice() -> bool | NotYet:
            n = worker.notices_deferred
            return n > deferred or NotYet(n)

        await wait_for(deferred_notice, "the notification let wait", timeout=30)
        assert worker.claims == claims
        # Another endpoint's row is not held up (here the fast path takes it).
        fast = await s.publish(event_to(FAST, severity="low"))
        await s.wait_final(fast, count=1, timeout=30)
        assert len(webhook_sink.received_on("/slow")) == 2
        assert len(more) == 3
        webhook_sink.release()  # the hung attempts end, and the stack can stop
    assert webhook_sink.peak_concurrent["/slow"] <= 2
    assert webhook_sink.duplicates() == []
