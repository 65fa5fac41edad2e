"""Leases while outcomes cannot be recorded: back-pressure, renewal, the attempt budget,
and the truthful log of an outcome that lost its lease (docs/delivery.md, "Duplicates").

PostgreSQL faults are real: the recorder's connections go through a TCP relay that drops
their packets (``TcpRelay.blackhole``), while everything else talks to the server directly.
"""

import asyncio
import re
import time
from collections import Counter
from collections.abc import Callable
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine
from structlog.testing import capture_logs

from dispatcher.app import build_delivery, build_providers, channel_configs
from dispatcher.db.engine import create_engine
from dispatcher.db.states import DeliveryStatus
from dispatcher.delivery.breaker_audit import BreakerAudit
from dispatcher.delivery.recorder import Recorder
from dispatcher.delivery.service import DeliveryService
from dispatcher.outbox.claims import claim
from dispatcher.outbox.outcomes import AttemptRecord, Outcome, complete
from dispatcher.settings import Settings
from dispatcher.sinks.smtp import SmtpSink
from dispatcher.sinks.twilio import TwilioSink
from dispatcher.sinks.webhook import WebhookSink
from tests.delivery.harness import (
    Stack,
    email_channel,
    event_to,
    sms_channel,
    webhook_channel,
)
from tests.tcp_relay import TcpRelay

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.rabbitmq,
    pytest.mark.usefixtures("cleanup_broker"),
]

TEAM = ("email", "crisis-team@example.org")
ON_CALL = ("sms", "+15550100001")
MONITOR = ("webhook", "safety-monitor")
LEASE = 4.0
#: Several leases long, and longer than the recorder's statement timeout.
FAULT = 3 * LEASE
EVENTS = 20


def channels(
    smtp: SmtpSink, twilio: TwilioSink, webhook: WebhookSink, **overrides: Any
) -> dict[str, Any]:
    """All three channels, each able to take every test delivery in one claim."""
    common = {"lease_seconds": LEASE, "concurrency": 32, **overrides}
    return {
        # An email try (connection wait + deadline + final reply) must fit in the lease.
        "email": email_channel(
            smtp.port,
            connection_wait_seconds=0.5,
            final_reply_seconds=0.5,
            **common,
        ),
        "sms": sms_channel(twilio.base_url, **common),
        "webhook": webhook_channel(
            webhook.url, ["safety-monitor"], max_inflight_per_recipient=32, **common
        ),
    }


def replica_with_own_recorder(
    settings: Settings, engine: AsyncEngine, recorder: Recorder, owner: str
) -> DeliveryService:
    """A replica as ``build_delivery`` makes it, but whose recorder has its own engine."""
    workers = {
        kind: (
            build_providers(kind, config, BreakerAudit(recorder, owner, kind)),
            config,
        )
        for kind, config in channel_configs(settings).items()
    }
    return DeliveryService(
        engine,
        settings.database_url.get_secret_value(),
        workers,
        recorder=recorder,
        owner=owner,
    )


def received(smtp: SmtpSink, twilio: TwilioSink, webhook: WebhookSink) -> int:
    return len(smtp.received) + len(twilio.received) + sum(webhook.accepted.values())


def sends(
    smtp: SmtpSink, twilio: TwilioSink, webhook: WebhookSink, rows: list[Any]
) -> Counter[str]:
    """How many times each delivery reached its receiver, by delivery id."""
    sms_of_event = {str(r.event_id): str(r.id) for r in rows if r.channel == "sms"}
    counts: Counter[str] = Counter(str(m.delivery_id) for m in smtp.received)
    for sms in twilio.received:  # the default SMS text names the event
        match = re.search(r"\(event ([0-9a-f-]{36})\)", sms.body)
        assert match is not None
        counts[sms_of_event[match[1]]] += 1
    counts.update(webhook.accepted)
    return counts


async def wait_until(condition: Callable[[], bool], what: str, timeout: float = 30):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("new_connections", "most"),
    [
        # One pooled connection dead, as in issue 16: the recorder's. Its leases are
        # renewed on another connection, so nobody else may take them: sent once.
        pytest.param(False, 1, id="recorder-connection-dead-half-open"),
        # The replica's recorder cannot reach PostgreSQL on any connection: its leases
        # run out and the other replica sends those deliveries again. Twice, never more.
        pytest.param(True, 2, id="recorder-cut-off-from-postgresql"),
    ],
)
async def test_a_stuck_recorder_never_lets_a_delivery_be_sent_more_than_twice(
    new_connections: bool,
    most: int,
    database: str,
    roomy_engine: AsyncEngine,
    make_settings: Callable[..., Settings],
    smtp_sink: SmtpSink,
    twilio_sink: TwilioSink,
    webhook_sink: WebhookSink,
) -> None:
    """A replica whose outcomes cannot be recorded for several leases stops claiming and
    keeps its leases where PostgreSQL can be reached; no delivery is lost or sent 3 times."""
    engine = roomy_engine
    settings = make_settings(
        database, channels=channels(smtp_sink, twilio_sink, webhook_sink)
    )
    url = make_url(database)
    assert url.host is not None
    assert url.port is not None
    with capture_logs() as logs:
        async with TcpRelay(url.host, url.port) as relay, AsyncExitStack() as stack:
            relayed = create_engine(
                url.set(port=relay.port).render_as_string(hide_password=False),
                pool_size=2,
            )
            stack.push_async_callback(relayed.dispose)
            stuck = replica_with_own_recorder(
                settings,
                engine,
                # Gives up on a statement after longer than the lease.
                Recorder(relayed, stall_after=1.0, timeout=LEASE * 1.5),
                "stuck-replica",
            )
            healthy = build_delivery(settings, engine, owner="healthy", mirror=False)
            ingest = await stack.enter_async_context(
                Stack(settings, engine, deliver=False)
            )
            await stuck.start()
            stack.push_async_callback(stuck.stop)
            # Recorded through the relay: the recorder's connection is open.
            await ingest.wait_final(
                await ingest.publish(event_to(TEAM, ON_CALL, MONITOR)), count=3
            )
            relay.blackhole(new_connections=new_connections)
            cut = time.monotonic()
            ids = await ingest.publish(
                *(event_to(TEAM, ON_CALL, MONITOR) for _ in range(EVENTS))
            )
            await wait_until(
                lambda: (
                    received(smtp_sink, twilio_sink, webhook_sink) >= 3 * (EVENTS + 1)
                ),
                "every delivery sent once, its outcome stuck in the recorder",
            )
            await wait_until(stuck.recorder.stalled, "the stuck replica to notice")
            claims = sum(w.claims for w in stuck.workers.values())
            # Another replica, ready to take over whatever lease runs out.
            await healthy.start()
            stack.push_async_callback(healthy.stop)
            await asyncio.sleep(
                cut + LEASE - time.monotonic()
            )  # a lease into the fault
            # The stuck replica has claimed nothing since (a claim under way may end).
            assert stuck.recorder.stalled()
            assert sum(w.claims for w in stuck.workers.values()) <= claims + 3
            await asyncio.sleep(cut + FAULT - time.monotonic())  # the fault's length
            relay.heal()
            await ingest.wait_final(ids, count=3 * EVENTS, timeout=60)
            rows = await ingest.deliveries()  # the first event's too
        # Both replicas stopped: every outcome is written, fenced or not.
    assert {r.status for r in rows} == {DeliveryStatus.DELIVERED}
    counts = sends(smtp_sink, twilio_sink, webhook_sink, rows)
    assert {str(r.id) for r in rows} <= set(counts)  # nothing lost
    assert max(counts.values()) <= most, counts.most_common(3)
    events = [entry["event"] for entry in logs]
    assert "dispatcher.delivery.claims_paused" in events
    # A second send happens only where the first sender's lease was taken over, and
    # that sender says so when its outcome finally reaches PostgreSQL.
    fenced = {
        e["delivery_id"]
        for e in logs
        if e["event"] == "dispatcher.delivery.outcome_fenced"
    }
    assert fenced == {d for d, n in counts.items() if n == 2}
    assert "dispatcher.delivery.dead_lettered" not in events


async def test_claims_whose_outcome_never_came_back_use_up_the_attempt_budget(
    engine: AsyncEngine,
    make_settings: Callable[..., Settings],
    database: str,
    webhook_sink: WebhookSink,
) -> None:
    """A delivery whose leases all ran out unrecorded is dead-lettered, not sent again."""
    max_attempts = 3
    retry = {"max_attempts": max_attempts, "base_delay": 0.05, "max_delay": 0.1}
    config = {
        "webhook": webhook_channel(webhook_sink.url, ["safety-monitor"], retry=retry)
    }
    settings = make_settings(database, channels=config)
    async with Stack(settings, engine, deliver=False) as ingest:
        (event_id,) = await ingest.publish(event_to(MONITOR))
        await ingest.wait_deliveries(lambda rows: len(rows) == 1, event_ids=[event_id])
    # A replica that claimed it max_attempts times and never recorded an outcome (its
    # sends may all have reached the endpoint).
    async with engine.connect() as conn:
        driver = (await conn.get_raw_connection()).driver_connection
        assert driver is not None
        for _ in range(max_attempts):
            # Claimed again as soon as the previous lease has run out.
            leased: list[Any] = []
            while not leased:
                leased = (
                    await claim(
                        driver, "webhook", limit=1, lease_seconds=0.05, owner="stuck"
                    )
                ).rows
    async with Stack(settings, engine) as s:
        (row,) = await s.wait_final([event_id], count=1)
        dead = await s.audit("delivery.dead_lettered")
    assert webhook_sink.received == []
    assert (row.status, row.attempts) == ("dead", max_attempts + 1)
    assert [d.detail["reason"] for d in dead] == ["max_attempts"]


async def test_a_worker_that_lost_its_lease_logs_a_fenced_outcome_not_a_dead_letter(
    engine: AsyncEngine,
    make_settings: Callable[..., Settings],
    database: str,
    smtp_sink: SmtpSink,
) -> None:
    """An attempt that ends after its lease was taken over logs outcome_fenced; only a
    dead letter that was committed is logged as one."""
    smtp_sink.data_delay = 1.0  # the relay answers late: time for another to take over
    smtp_sink.fail(550, times=1)  # and the late answer is a permanent refusal
    config = {"email": email_channel(smtp_sink.port, concurrency=1, critical_reserve=0)}
    settings = make_settings(database, channels=config)
    with capture_logs() as logs:
        async with Stack(settings, engine) as s:
            (event_id,) = await s.publish(event_to(TEAM))
            await wait_until(lambda: smtp_sink.attempts == 1, "the message sent")
            async with engine.connect() as conn:
                # The sender stalls past its lease (as under SIGSTOP): the lease runs
                # out and another replica claims the delivery and delivers it. The
                # worker's only slot is busy, so it cannot claim it again itself.
                await conn.execute(
                    text(
                        "UPDATE deliveries SET next_attempt_at = now() - interval '1 s'"
                    )
                )
                await conn.commit()
                driver = (await conn.get_raw_connection()).driver_connection
                assert driver is not None
                (taken,) = (
                    await claim(
                        driver, "email", limit=1, lease_seconds=60, owner="replica-b"
                    )
                ).rows
                now = datetime.now(UTC)
                delivered = AttemptRecord(
                    taken.attempts,
                    "relay-1",
                    now,
                    now,
                    "delivered",
                    provider_code="250",
                )
                await complete(
                    driver,
                    [
                        Outcome(
                            taken.id,
                            taken.lease_token,
                            DeliveryStatus.DELIVERED,
                            provider="relay-1",
                            attempts=(delivered,),
                        )
                    ],
                )
            # The first sender's refusal arrives now, too late to count; its try is
            # still recorded, because it happened.
            (row,) = await s.deliveries([event_id])
            deadline = time.monotonic() + 30
            while len(await s.attempts(row.id)) < 2:
                assert time.monotonic() < deadline, "the late outcome never recorded"
                await asyncio.sleep(0.05)
            (row,) = await s.deliveries([event_id])
            dead = await s.audit("delivery.dead_lettered")
    assert (row.status, row.attempts) == ("delivered", 2)
    assert dead == []
    assert [e for e in logs if e["event"] == "dispatcher.delivery.dead_lettered"] == []
    (fenced,) = [e for e in logs if e["event"] == "dispatcher.delivery.outcome_fenced"]
    assert fenced["delivery_id"] == str(row.id)
    assert fenced["discarded"] == "dead"
