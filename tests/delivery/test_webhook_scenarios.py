"""Webhook delivery end to end: broker -> ingest -> outbox -> worker -> a real HTTP server."""

import asyncio
import json
import uuid
from datetime import timedelta
from typing import Any

import aio_pika
import pytest
from sqlalchemy import text
from standardwebhooks import Webhook

from dispatcher.events.kinds import ChannelKind
from dispatcher.sinks.webhook import WebhookSink
from tests.delivery.harness import SECRET, StackFactory, event_to, webhook_channel
from tests.waiting import wait_for

pytestmark = [pytest.mark.postgres, pytest.mark.rabbitmq]

ENDPOINTS = ("crisis-line", "safety-monitor", "case-system")


def channels(
    sink: WebhookSink, names: tuple[str, ...] = ENDPOINTS, **overrides: Any
) -> dict[str, Any]:
    return {"webhook": webhook_channel(sink.url, names, **overrides)}


async def test_one_failing_endpoint_of_three_does_not_hold_back_the_others(
    stack: StackFactory, webhook_sink: WebhookSink
) -> None:
    webhook_sink.respond("/case-system", 503)
    async with stack(channels=channels(webhook_sink)) as s:
        ids = await s.publish(
            *(event_to(*[("webhook", n) for n in ENDPOINTS]) for _ in range(5))
        )
        await s.wait_deliveries(
            lambda rows: (
                sum(r.status == "delivered" for r in rows) == 10
                # Retrying: once its breaker opens, one delivery is the probe and the
                # others wait without burning attempts, so not every row reaches 2.
                and any(r.attempts >= 2 for r in rows if r.recipient == "case-system")
            ),
            event_ids=ids,
            what="two endpoints delivered, the third retrying",
        )
        sick = [r for r in await s.deliveries(ids) if r.recipient == "case-system"]
        assert {r.status for r in sick} <= {"pending", "in_flight"}
        assert {r.last_error_class for r in sick} == {"provider_transient"}

        webhook_sink.clear("/case-system")
        rows = await s.wait_final(ids, count=15)
    assert {r.status for r in rows} == {"delivered"}
    assert webhook_sink.duplicates() == []
    for request in webhook_sink.received:
        if (
            request.status == 200
        ):  # every accepted body verifies with the reference library
            Webhook(SECRET).verify(request.body, request.headers)


async def test_404_is_dead_lettered_after_one_attempt_and_mirrored_to_the_dlq(
    stack: StackFactory,
    webhook_sink: WebhookSink,
    amqp: aio_pika.abc.AbstractRobustConnection,
    names: dict[str, str],
) -> None:
    webhook_sink.respond("/case-system", 404)
    async with stack(channels=channels(webhook_sink)) as s:
        (event_id,) = await s.publish(event_to(("webhook", "case-system")))
        (row,) = await s.wait_final([event_id], count=1)
        assert (row.status, row.attempts, row.last_error_class) == (
            "dead",
            1,
            "provider_permanent",
        )
        (attempt,) = await s.attempts(row.id)
        assert (attempt.outcome, attempt.provider_code) == ("failed", "404")
        (entry,) = await s.audit("delivery.dead_lettered")
        assert entry.delivery_id == row.id
        assert entry.detail["reason"] == "permanent_error"

        channel = await amqp.channel()
        queue = await channel.declare_queue(
            f"{names['queue_prefix']}.dlq.webhook", passive=True
        )
        message = await _get(queue)
        body = json.loads(message.body)
        assert body["delivery_id"] == str(row.id)
        assert body["event_id"] == str(event_id)
        assert body["error_class"] == "provider_permanent"
        assert "case-system" not in message.body.decode()  # ids only, no recipient
        await message.ack()

        async def marked() -> object:
            (found,) = await s.rows(
                "SELECT mirrored_at FROM deliveries WHERE id = :id", id=row.id
            )
            return found.mirrored_at

        # Set once the broker confirmed, so no sweep resends it.
        await wait_for(marked, "the dead letter marked as mirrored", timeout=5)
    assert len(webhook_sink.received_on("/case-system")) == 1


async def _get(
    queue: aio_pika.abc.AbstractQueue,
) -> aio_pika.abc.AbstractIncomingMessage:
    message = await wait_for(
        lambda: queue.get(fail=False), "a dead letter in the DLQ mirror", timeout=5
    )
    assert message is not None
    return message


async def test_429_retry_after_is_honoured(
    stack: StackFactory, webhook_sink: WebhookSink
) -> None:
    webhook_sink.respond("/crisis-line", 429, times=1, retry_after="2")
    async with stack(channels=channels(webhook_sink)) as s:
        (event_id,) = await s.publish(event_to(("webhook", "crisis-line")))
        (row,) = await s.wait_final([event_id], count=1)
        first, second = await s.attempts(row.id)
    assert (first.error_class, first.provider_code) == ("rate_limited", "429")
    assert second.outcome == "delivered"
    # The jittered backoff here is at most 0.05 s: only Retry-After explains the wait.
    assert second.started_at - first.finished_at >= timedelta(seconds=2)


async def test_breaker_opens_makes_no_calls_while_open_probes_and_closes(
    stack: StackFactory, webhook_sink: WebhookSink
) -> None:
    breaker = {
        "failure_threshold": 3,
        "failure_rate": 1.0,
        "min_calls": 100,
        "open_seconds": 2.0,
    }
    webhook_sink.respond("/safety-monitor", 503)
    config = channels(webhook_sink, breaker=breaker, concurrency=1, critical_reserve=0)
    async with stack(channels=config) as s:
        ids = await s.publish(
            *(event_to(("webhook", "safety-monitor")) for _ in range(6))
        )
        await s.wait_deliveries(lambda _rows: True, event_ids=ids, what="stored")
        (opened,) = await wait_for(
            lambda: s.audit("breaker.transition"), "the breaker to open", timeout=5
        )
        assert (opened.detail["new"], opened.detail["reason"]) == (
            "open",
            "consecutive_failures",
        )
        assert len(webhook_sink.received_on("/safety-monitor")) == 3
        await asyncio.sleep(1.0)  # well inside open_seconds
        # No calls while open.
        assert len(webhook_sink.received_on("/safety-monitor")) == 3

        webhook_sink.clear("/safety-monitor")
        rows = await s.wait_final(ids, count=6, timeout=20)
        transitions = [
            (a.detail["old"], a.detail["new"])
            for a in await s.audit("breaker.transition")
        ]
    assert {r.status for r in rows} == {"delivered"}
    assert transitions == [
        ("closed", "open"),
        ("open", "half_open"),
        ("half_open", "closed"),
    ]
    # Waiting while open cost no attempts: 3 failures, then one success each.
    assert sum(r.attempts for r in rows) == 6 + 3


async def test_endpoint_that_never_answers_ends_at_the_deadline_others_unaffected(
    stack: StackFactory, webhook_sink: WebhookSink
) -> None:
    webhook_sink.hang("/case-system")
    config = channels(webhook_sink, deadline_seconds=1.0)
    async with stack(channels=config) as s:
        ids = await s.publish(
            *(
                event_to(("webhook", "case-system"), ("webhook", "crisis-line"))
                for _ in range(3)
            )
        )
        rows = await s.wait_deliveries(
            lambda rows: (
                sum(r.status == "delivered" for r in rows) == 3
                and all(
                    r.last_error_class == "timeout"
                    for r in rows
                    if r.recipient == "case-system"
                )
            ),
            event_ids=ids,
            what="the healthy endpoint delivered while the hanging one times out",
        )
        hung = [r for r in rows if r.recipient == "case-system"]
        attempts = [a for r in hung for a in await s.attempts(r.id)]
    assert attempts
    assert {a.error_class for a in attempts} == {"timeout"}
    for a in attempts:
        assert (
            1000 <= a.latency_ms < 2500
        )  # cut at the 1 s deadline, not by a protocol timeout
    assert all(r.status == "delivered" for r in rows if r.recipient == "crisis-line")


async def test_half_of_all_requests_failing_still_delivers_everything_exactly_once(
    stack: StackFactory, webhook_sink: WebhookSink
) -> None:
    for name in ENDPOINTS:
        webhook_sink.flaky(f"/{name}", 0.5)
    breaker = {"failure_threshold": 1000, "failure_rate": 1.0, "min_calls": 1000}
    async with stack(channels=channels(webhook_sink, breaker=breaker)) as s:
        ids = await s.publish(
            *(event_to(*[("webhook", n) for n in ENDPOINTS]) for _ in range(20))
        )
        rows = await s.wait_final(ids, count=60, timeout=60)
    assert {r.status for r in rows} == {"delivered"}
    assert sum(r.attempts for r in rows) > 60  # failures really happened
    assert webhook_sink.duplicates() == []
    assert sum(webhook_sink.accepted.values()) == 60


async def test_critical_deliveries_do_not_wait_behind_a_low_severity_backlog(
    stack: StackFactory, webhook_sink: WebhookSink
) -> None:
    webhook_sink.trickle("/case-system", size=2, interval=0.05)  # ~0.1 s per request
    config = channels(webhook_sink, concurrency=4, critical_reserve=1)
    backlog = [
        event_to(("webhook", "case-system"), severity="low") for _ in range(5000)
    ]
    async with stack(channels=config) as s:
        await s.publish(*backlog)
        await s.wait_deliveries(
            lambda rows: (
                len(rows) == 5000 and any(r.status == "delivered" for r in rows)
            ),
            what="backlog stored and draining",
            timeout=60,
        )
        (critical,) = await s.publish(
            event_to(("webhook", "case-system"), severity="critical")
        )
        (row,) = await s.wait_final([critical], count=1, timeout=20)
        low = await s.rows(
            "SELECT count(*) AS n FROM deliveries WHERE priority = 3 AND status <> 'delivered'"
        )
    assert row.status == "delivered"
    assert low[0].n > 4000  # the backlog was nowhere near drained


async def test_a_scheduled_retry_survives_a_restart(
    stack: StackFactory, webhook_sink: WebhookSink
) -> None:
    """Retries are rows: a replica that stops with a retry scheduled loses nothing."""
    # Retry-After puts the retry at least 3 s ahead (full jitter alone may pick ~0 s,
    # and a second failed try before the replica stops would change the count below).
    webhook_sink.respond("/crisis-line", 503, retry_after="3")
    slow_retry = {
        "max_attempts": 5,
        "base_delay": 2.0,
        "max_delay": 2.0,
        "max_age": 600,
    }
    config = channels(webhook_sink, retry=slow_retry)
    async with stack(channels=config) as s:
        (event_id,) = await s.publish(event_to(("webhook", "crisis-line")))
        (row,) = await s.wait_deliveries(
            lambda rows: rows[0].status == "pending" and rows[0].attempts == 1,
            event_ids=[event_id],
            what="first attempt failed and a retry scheduled",
        )
    # Stopped with the retry still ahead; the provider recovers meanwhile.
    webhook_sink.clear("/crisis-line")
    async with stack(channels=config) as s:
        (row,) = await s.wait_final([event_id], count=1)
        first, second = await s.attempts(row.id)
    assert (row.status, row.attempts) == ("delivered", 2)
    assert (first.outcome, second.outcome) == ("failed", "delivered")


async def test_a_hanging_endpoint_holds_only_its_own_slots(
    stack: StackFactory, webhook_sink: WebhookSink
) -> None:
    """20 deliveries queued for a hanging endpoint cannot take every slot of the channel."""
    webhook_sink.hang("/case-system")
    config = channels(
        webhook_sink,
        concurrency=10,
        critical_reserve=0,
        max_inflight_per_recipient=4,
        deadline_seconds=3.0,
    )
    async with stack(channels=config) as s:
        stuck = await s.publish(
            *(event_to(("webhook", "case-system")) for _ in range(20))
        )
        await wait_for(
            lambda: len(webhook_sink.received_on("/case-system")) >= 4,
            "4 requests held by the hanging endpoint",
            timeout=10,
        )
        healthy = await s.publish(
            *(event_to(("webhook", "crisis-line")) for _ in range(5))
        )
        rows = await s.wait_final(healthy, count=5, timeout=20)
        hung = await s.deliveries(stuck)
    assert {r.status for r in rows} == {"delivered"}
    # Every healthy delivery finished before the first hanging attempt reached its deadline,
    # and never more than the cap of the hanging endpoint's requests were open at once.
    assert not any(r.last_error_class == "timeout" for r in hung)
    assert len(webhook_sink.received_on("/case-system")) == 4


async def test_new_deliveries_wake_the_worker_through_listen_notify(
    stack: StackFactory, webhook_sink: WebhookSink
) -> None:
    """With a 30 s sweep, only the ingest commit's NOTIFY can start the send promptly."""
    config = channels(webhook_sink, poll_interval=30.0)
    async with stack(channels=config) as s:
        await s.wait_listening_and_swept()  # the next sweep is 30 s away
        (event_id,) = await s.publish(event_to(("webhook", "crisis-line")))
        (row,) = await s.wait_final([event_id], count=1, timeout=10)
    assert row.status == "delivered"


@pytest.mark.parametrize(
    ("limits", "severity"),
    [
        ({"max_inflight_per_recipient": 1}, "critical"),
        (
            {
                "concurrency": 2,
                "critical_reserve": 1,
                "max_inflight_per_recipient": None,
            },
            "low",
        ),
    ],
    ids=["endpoint-at-its-cap", "general-slots-taken"],
)
async def test_a_freed_slot_starts_the_next_claim_without_waiting_for_the_sweep(
    stack: StackFactory,
    webhook_sink: WebhookSink,
    limits: dict[str, Any],
    severity: str,
) -> None:
    """Rows left behind for want of a slot are claimed when one frees, not at the sweep."""
    webhook_sink.trickle("/case-system", size=2, interval=0.1)  # ~0.2 s per request
    config = channels(webhook_sink, poll_interval=30.0, **limits)
    async with stack(channels=config) as s:
        await s.wait_listening_and_swept()  # the next sweep is 30 s away
        # Their notifications all arrive while the first attempt is still open: after
        # that, only a freed slot can start the claims of the rest.
        ids = await s.publish(
            *(event_to(("webhook", "case-system"), severity=severity) for _ in range(4))
        )
        rows = await s.wait_final(ids, count=4, timeout=15)
    assert {r.status for r in rows} == {"delivered"}
    assert webhook_sink.duplicates() == []


async def test_kept_connections_are_replaced_after_postgresql_drops_them(
    stack: StackFactory, webhook_sink: WebhookSink
) -> None:
    """Claims and outcomes resume on new connections once their kept ones are killed."""
    async with stack(channels=channels(webhook_sink)) as s:
        (first,) = await s.publish(event_to(("webhook", "crisis-line")))
        await s.wait_final([first], count=1)
        # Every other backend of this database: the worker's claim connection, the
        # recorder's, the ingest writers', the LISTEN connection and the pool's.
        await s.rows(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        ids = await s.publish(*(event_to(("webhook", "crisis-line")) for _ in range(3)))
        rows = await s.wait_final(ids, count=3)
    assert {r.status for r in rows} == {"delivered"}
    assert {r.attempts for r in rows} == {1}
    assert webhook_sink.duplicates() == []


async def test_the_sweep_finds_deliveries_no_notification_announced(
    stack: StackFactory, webhook_sink: WebhookSink
) -> None:
    """A delivery made due without NOTIFY (here: a stored retry time passing) is swept."""
    config = channels(webhook_sink, poll_interval=0.3)
    async with stack(channels=config) as s:
        (event_id,) = await s.publish(event_to(("webhook", "crisis-line")))
        await s.wait_final([event_id], count=1)
        # Put it back as if a retry were scheduled 1 s ahead: nothing will notify for it.
        async with s.engine.begin() as conn:
            await conn.execute(
                text(
                    "UPDATE deliveries SET status = 'pending',"
                    " next_attempt_at = now() + interval '1 second'"
                )
            )
        rows = await s.wait_deliveries(
            lambda rows: rows[0].status == "delivered" and rows[0].attempts == 2,
            event_ids=[event_id],
            what="the swept retry delivered",
        )
    assert len(webhook_sink.received_on("/crisis-line")) == 2
    assert rows[0].delivered_at is not None


async def test_a_backlog_is_claimed_in_batches_not_one_claim_per_freed_slot(
    stack: StackFactory, webhook_sink: WebhookSink
) -> None:
    """While due rows wait for slots, a claim waits for a quarter of the slots to free.

    Also while notifications keep arriving: new critical rows queue behind the waiting
    critical ones, so a notification alone does not start a claim for one slot.
    """
    webhook_sink.trickle("/case-system", size=2, interval=0.1)  # ~0.2 s per request
    config = channels(
        webhook_sink,
        concurrency=16,
        critical_reserve=0,
        max_inflight_per_recipient=None,
    )
    async with stack(channels=config) as s:
        assert s.delivery is not None
        worker = s.delivery.workers[ChannelKind.WEBHOOK]
        await wait_for(s.delivery.waker.connected, "the LISTEN connection", timeout=10)
        ids: list[uuid.UUID] = []
        for _ in range(16):  # staggered, so the slots free one at a time from now on
            ids += await s.publish(event_to(("webhook", "case-system")))
            await asyncio.sleep(0.01)
        ids += await s.publish(
            *(event_to(("webhook", "case-system")) for _ in range(48))
        )
        for _ in range(10):  # one commit, so one notification, each
            ids += await s.publish(event_to(("webhook", "case-system")))
            await asyncio.sleep(0.03)
        rows = await s.wait_final(ids, count=74, timeout=30)
        claims = worker.claims
    assert {r.status for r in rows} == {"delivered"}
    assert webhook_sink.duplicates() == []
    # 16 staggered claims, then 58 rows through 16 slots refilled 4 at a time: about 15
    # more, plus sweeps and the notifications that found free slots (30-35 here). One
    # claim per freed slot and per notification made 46-55.
    assert claims <= 42, claims


@pytest.mark.parametrize("reserve", [0, 2, 16], ids=lambda r: f"reserve-{r}")
@pytest.mark.parametrize("cap", [1, 8, 32, None], ids=lambda c: f"cap-{c}")
async def test_a_backlog_for_one_endpoint_drains_on_freed_slots_alone(
    stack: StackFactory, webhook_sink: WebhookSink, cap: int | None, reserve: int
) -> None:
    """A stored backlog for one endpoint drains without the sweep, whatever the cap.

    The shipped webhook defaults (32 slots, cap 8, reserve 2) among the parameters. Nothing
    announces these rows after the worker's first claim, so only freed slots can start
    the claims that drain them; the sweep is 60 s away, twice the deadline.
    """
    webhook_sink.latency("/safety-monitor", 0.001, 0.010)  # attempts end one by one
    config = channels(
        webhook_sink,
        ("safety-monitor",),
        poll_interval=60.0,
        critical_reserve=reserve,
        max_inflight_per_recipient=cap,
    )
    backlog = [
        event_to(("webhook", "safety-monitor"), severity="low") for _ in range(300)
    ]
    async with stack(channels=config, deliver=False) as s:
        ids = await s.publish(*backlog)
        await s.wait_deliveries(
            lambda rows: len(rows) == 300, event_ids=ids, what="backlog stored"
        )
    async with stack(channels=config) as s:
        rows = await s.wait_final(ids, count=300, timeout=30)
    assert {r.status for r in rows} == {"delivered"}
    assert {r.attempts for r in rows} == {1}
    assert webhook_sink.duplicates() == []


async def test_a_capped_endpoints_backlog_is_claimed_a_quarter_of_its_cap_at_a_time(
    stack: StackFactory, webhook_sink: WebhookSink
) -> None:
    """At the default cap of 8, a waiting backlog is claimed once 2 slots free, not per slot."""
    # Answers slow enough that slots free one at a time, not several during each claim.
    webhook_sink.latency("/safety-monitor", 0.02, 0.06)
    config = channels(webhook_sink, ("safety-monitor",), poll_interval=60.0)
    backlog = [
        event_to(("webhook", "safety-monitor"), severity="low") for _ in range(200)
    ]
    async with stack(channels=config, deliver=False) as s:
        ids = await s.publish(*backlog)
        await s.wait_deliveries(
            lambda rows: len(rows) == 200, event_ids=ids, what="backlog stored"
        )
    async with stack(channels=config) as s:
        assert s.delivery is not None
        worker = s.delivery.workers[ChannelKind.WEBHOOK]
        rows = await s.wait_final(ids, count=200, timeout=30)
        claims = worker.claims
    assert {r.status for r in rows} == {"delivered"}
    # 2 rows a claim, 8 for the first, some more where slots freed during a claim:
    # 91-95 here. One claim per freed slot took 167-175.
    assert claims <= 120, claims
