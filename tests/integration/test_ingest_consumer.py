"""Ingest end to end through real RabbitMQ and PostgreSQL, in-process."""

import json
import uuid
from urllib.parse import urlsplit, urlunsplit

import aio_pika
import aiormq
import pytest
from sqlalchemy import text

from dispatcher import topology
from dispatcher.app import IngestService
from dispatcher.publisher import Publisher
from dispatcher.testing import event_bytes
from tests.conftest import AMQP_URL
from tests.tcp_relay import TcpRelay
from tests.unit.test_parse import MALFORMED
from tests.waiting import NotYet, wait_for

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.rabbitmq,
    pytest.mark.usefixtures("cleanup_broker"),
]

WEBHOOKS = {
    "webhook": {
        "endpoints": {"safety-monitor": {"url": "https://monitor.example.org/hook"}}
    }
}


async def count(engine, sql: str) -> int:
    async with engine.connect() as conn:
        return int((await conn.execute(text(sql))).scalar_one())


async def wait_count(engine, sql: str, expected: int, timeout: float = 30.0) -> int:
    """The count of ``sql`` once it reaches ``expected`` (callers assert it is not more)."""

    async def reached() -> int | NotYet:
        value = await count(engine, sql)
        return value if value >= expected else NotYet(value)

    return await wait_for(reached, f"{sql!r} to reach {expected}", timeout=timeout)


async def queue_depth(amqp, name: str) -> int:
    channel = await amqp.channel()
    try:
        queue = await channel.declare_queue(name, passive=True)
        return int(queue.declaration_result.message_count or 0)
    finally:
        await channel.close()


async def wait_queue_empty(amqp, name: str, timeout: float = 30.0) -> None:
    """Until no message of queue ``name`` is ready (all delivered; acked ones are gone)."""

    async def empty() -> bool | NotYet:
        depth = await queue_depth(amqp, name)
        return depth == 0 or NotYet(depth)

    await wait_for(empty, f"queue {name} to be empty", timeout=timeout)


def acked(service: IngestService) -> int:
    """Messages acked so far: the acker's watermark, over every channel it acked on."""
    return sum(state.acked for state in service.acker._channels.values())


@pytest.fixture
async def service(engine, database, make_settings):
    settings = make_settings(database, channels=WEBHOOKS)
    service = IngestService(settings, engine)
    await service.start()
    yield service
    await service.stop()


async def publish(settings, bodies: list[tuple[bytes, str]]) -> None:
    async with Publisher(AMQP_URL, settings.exchange) as publisher:
        await publisher.publish_many((b, key, None) for b, key in bodies)


async def test_events_are_stored_then_acked_in_batches(service, engine, amqp) -> None:
    """Published events are stored with deliveries, the queue drains, and acks are batched."""
    bodies = [
        (
            event_bytes(
                recipients=[{"channel": "email", "to": f"team{n}@example.org"}]
            ),
            "crisis.detected",
        )
        for n in range(300)
    ]
    await publish(service.settings, bodies)
    assert await wait_count(engine, "SELECT count(*) FROM events", 300) == 300
    assert await wait_count(engine, "SELECT count(*) FROM deliveries", 300) == 300
    await wait_queue_empty(amqp, topology.ingest_queue(service.settings.queue_prefix))
    await wait_for(
        lambda: acked(service) >= 300 or NotYet(acked(service)),
        "all 300 messages acked",
    )
    assert 1 <= service.acker.acks_sent < 300, "acks must be multiple-acks per batch"


async def test_every_malformed_kind_becomes_one_rejected_row(
    service, engine, amqp
) -> None:
    """Each malformed message is stored once with its reason, acked, and the consumer goes on."""
    bodies = [(body, "crisis.detected") for _, body, _ in MALFORMED]
    await publish(service.settings, bodies)
    valid = event_bytes()
    await publish(service.settings, [(valid, "crisis.detected")])
    n = await wait_count(
        engine, "SELECT count(*) FROM rejected_messages", len(MALFORMED)
    )
    async with engine.connect() as conn:
        got = sorted(
            (await conn.execute(text("SELECT reason FROM rejected_messages"))).scalars()
        )
    import collections

    assert n == len(MALFORMED), collections.Counter(
        r.value for _, _, r in MALFORMED
    ) - collections.Counter(got)
    assert await wait_count(engine, "SELECT count(*) FROM events", 1) == 1
    async with engine.connect() as conn:
        reasons = sorted(
            (await conn.execute(text("SELECT reason FROM rejected_messages"))).scalars()
        )
    assert reasons == sorted(r.value for _, _, r in MALFORMED)
    await wait_queue_empty(amqp, topology.ingest_queue(service.settings.queue_prefix))


async def test_duplicate_publish_is_idempotent(service, engine) -> None:
    """The same event published three times is one event and one set of deliveries."""
    body = event_bytes(recipients=[{"channel": "sms", "to": "+15551234567"}])
    await publish(service.settings, [(body, "crisis.detected")] * 3)
    assert (
        await wait_count(
            engine, "SELECT count(*) FROM audit_log WHERE kind = 'event.duplicate'", 2
        )
        == 2
    )
    assert await wait_count(engine, "SELECT count(*) FROM events", 1) == 1
    assert await wait_count(engine, "SELECT count(*) FROM deliveries", 1) == 1


async def test_routing_rules_add_recipients(
    engine, database, make_settings, amqp
) -> None:
    """Rules add recipients by type pattern and severity; explicit and rule recipients merge."""
    rules = [
        {
            "name": "crisis-critical",
            "types": ["crisis.*"],
            "min_severity": "high",
            "recipients": [
                {"channel": "email", "to": "crisis-team@example.org"},
                {"channel": "sms", "to": "+15550001111"},
                {"channel": "webhook", "to": "safety-monitor"},
            ],
        }
    ]
    settings = make_settings(database, channels=WEBHOOKS, routing=rules)
    service = IngestService(settings, engine)
    await service.start()
    try:
        critical = event_bytes(
            severity="critical",
            recipients=[{"channel": "email", "to": "crisis-team@example.org"}],
        )
        low = event_bytes(severity="low")
        other = event_bytes(type="wellbeing.checkin", severity="critical")
        await publish(
            settings,
            [
                (critical, "crisis.detected"),
                (low, "crisis.detected"),
                (other, "wellbeing.checkin"),
            ],
        )
        assert await wait_count(engine, "SELECT count(*) FROM events", 3) == 3
    finally:
        await service.stop()
    async with engine.connect() as conn:
        counts = dict(
            (
                await conn.execute(
                    text(
                        "SELECT e.severity || ':' || e.type, count(d.id) FROM events e LEFT JOIN deliveries d ON d.event_id = e.id GROUP BY 1"
                    )
                )
            ).all()
        )
        rules_used = set(
            (
                await conn.execute(
                    text("SELECT DISTINCT coalesce(rule, '-') FROM deliveries")
                )
            ).scalars()
        )
    assert counts == {
        "critical:crisis.detected": 3,
        "low:crisis.detected": 0,
        "critical:wellbeing.checkin": 0,
    }
    assert rules_used == {"-", "crisis-critical"}


async def test_dead_lettered_messages_are_consumed_not_lost(
    service, engine, amqp
) -> None:
    """What lands in the ingest DLQ is consumed: a valid event is stored, garbage is rejected."""
    channel = await amqp.channel()
    dlx = await channel.get_exchange(topology.ingest_dlx(service.settings.queue_prefix))
    valid = event_bytes(recipients=[{"channel": "email", "to": "team@example.org"}])
    await dlx.publish(
        aio_pika.Message(
            valid, headers={"x-death": [{"reason": "delivery_limit", "count": 20}]}
        ),
        routing_key="crisis.detected",
    )
    await dlx.publish(aio_pika.Message(b"garbage"), routing_key="crisis.detected")
    await channel.close()
    assert await wait_count(engine, "SELECT count(*) FROM events", 1) == 1
    assert (
        await wait_count(
            engine,
            "SELECT count(*) FROM rejected_messages WHERE source = 'ingest_dlq'",
            1,
        )
        == 1
    )
    async with engine.connect() as conn:
        detail = (
            await conn.execute(
                text("SELECT detail FROM audit_log WHERE kind = 'event.received'")
            )
        ).scalar_one()
    assert detail["source"] == "ingest_dlq"
    await wait_queue_empty(amqp, topology.ingest_dlq(service.settings.queue_prefix))
    # Ready is 0 once delivered; that they were acked too shows here (nothing else
    # was consumed in this test), since a failed ack is not counted.
    await wait_for(lambda: service.acker.acks_sent >= 1, "the dead letters acked")


async def test_ingest_queue_is_quorum_with_delivery_limit_and_dlx(
    service, amqp
) -> None:
    """The ingest queue is declared durable, quorum, with an explicit delivery limit and DLX."""
    channel = await amqp.channel()
    name = topology.ingest_queue(service.settings.queue_prefix)
    # Re-declaring with the same arguments succeeds; a mismatch would close the channel.
    await channel.declare_queue(
        name,
        durable=True,
        arguments={
            "x-queue-type": "quorum",
            "x-delivery-limit": service.settings.ingest.delivery_limit,
            "x-dead-letter-exchange": topology.ingest_dlx(
                service.settings.queue_prefix
            ),
        },
    )
    await channel.close()


async def test_unroutable_publish_is_an_error(make_settings) -> None:
    """Publishing to an exchange with no bound queue fails loudly instead of vanishing."""
    from dispatcher.errors import PublishError

    settings = make_settings(exchange=f"test.unbound.{uuid.uuid4().hex[:8]}")
    async with Publisher(AMQP_URL, settings.exchange) as publisher:
        with pytest.raises(PublishError, match="unroutable"):
            await publisher.publish(json.dumps({"a": 1}).encode(), "crisis.detected")


async def ingest_delivery_callback(service: IngestService) -> object:
    """The callback aiormq calls for the ingest consumer on its current channel."""
    queue, tag = service.consumer._queue_obj, service.consumer._consumer_tag
    assert queue is not None
    assert tag is not None
    channel = await queue.channel.get_underlay_channel()
    assert isinstance(channel, aiormq.Channel)
    return channel.consumers.get(tag)


async def test_broker_connection_reset_restores_the_consumer_and_loses_nothing(
    engine, database, make_settings, amqp
) -> None:
    """After a TCP reset of the broker connection, the ingest consumer is restored (and
    the lean delivery path takes it over again); every event is stored once and acked."""
    amqp_url = urlsplit(AMQP_URL)
    assert amqp_url.hostname is not None
    assert amqp_url.port is not None
    async with TcpRelay(amqp_url.hostname, amqp_url.port) as relay:
        settings = make_settings(
            database,
            channels=WEBHOOKS,
            amqp_url=urlunsplit(
                amqp_url._replace(
                    netloc=amqp_url.netloc.replace(
                        f":{amqp_url.port}", f":{relay.port}"
                    )
                )
            ),
        )
        service = IngestService(settings, engine)
        await service.start()
        try:
            events = [
                (event_bytes(recipients=[{"channel": "sms", "to": "+15551234567"}]), k)
                for k in ["crisis.detected"] * 200
            ]
            await publish(settings, events[:100])  # straight to the broker
            assert await wait_count(engine, "SELECT count(*) FROM events", 100) == 100
            assert await ingest_delivery_callback(service) == service.intake.on_delivery
            relay.reset()
            await publish(settings, events[100:])
            assert await wait_count(engine, "SELECT count(*) FROM events", 200) == 200
            assert relay.connections >= 2, "the dispatcher reconnected"
            assert await ingest_delivery_callback(service) == service.intake.on_delivery
        finally:
            await service.stop()
    # Stopped and disconnected: anything left unacked would be back in the queue.
    assert await queue_depth(amqp, topology.ingest_queue(settings.queue_prefix)) == 0
    assert await wait_count(engine, "SELECT count(*) FROM deliveries", 200) == 200


async def test_conflicting_republish_in_a_backlog_never_replaces_the_original(
    engine, database, make_settings
) -> None:
    """A backlog of originals, each followed a few messages later by a conflicting body
    with the same event_id, taken by two writers: every original is the stored event and
    every conflict is audited as the conflict."""
    # Batches the size of a block of originals: batches taken at the same moment by the
    # two writers hold originals and their conflicts (on main most of 200 blocks race).
    settings = make_settings(
        database, channels=WEBHOOKS, ingest={"writers": 2, "batch_max": 5}
    )
    declared = IngestService(settings, engine)
    await declared.start()
    await declared.stop()  # the queue exists; the backlog builds up in it
    sms = [{"channel": "sms", "to": "+15551234567"}]
    backlog: list[tuple[bytes, str]] = []
    conflicts: list[str] = []
    for _ in range(200):
        ids = [str(uuid.uuid4()) for _ in range(5)]
        for event_id in ids:
            body = event_bytes(event_id=event_id, recipients=sms)
            backlog.append((body, f"original-{event_id}"))
        for event_id in ids:
            body = event_bytes(
                event_id=event_id, severity="low", data={"v": 2}, recipients=sms
            )
            backlog.append((body, f"conflict-{event_id}"))
            conflicts.append(f"conflict-{event_id}")
    async with Publisher(AMQP_URL, settings.exchange) as publisher:
        for body, message_id in backlog:  # one by one: the broker keeps this order
            await publisher.publish(body, "crisis.detected", message_id=message_id)
    service = IngestService(settings, engine)
    await service.start()
    try:
        assert await wait_count(
            engine,
            "SELECT count(*) FROM audit_log"
            " WHERE kind IN ('event.received', 'event.conflict')",
            len(backlog),
            timeout=60,
        ) == len(backlog)
    finally:
        await service.stop()
    async with engine.connect() as conn:
        replaced = (
            await conn.execute(
                text("SELECT count(*) FROM events WHERE severity <> 'critical'")
            )
        ).scalar_one()
        audited = (
            await conn.execute(
                text(
                    "SELECT detail->>'message_id' FROM audit_log"
                    " WHERE kind = 'event.conflict'"
                )
            )
        ).scalars()
        audited_as_conflict = sorted(audited)
    assert replaced == 0, f"{replaced} of {len(conflicts)} originals were replaced"
    assert audited_as_conflict == sorted(conflicts)
