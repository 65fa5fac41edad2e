"""The limit pipeline: the dispatcher's essential work, hand-written (issue 15).

A plain aio-pika consumer (prefetch ``PREFETCH``) whose messages one writer takes
in batches (whatever arrived while the previous batch was written, at most ``BATCH``):
one transaction inserts the batch's events and their deliveries into the dispatcher's
schema (two ``unnest`` statements over asyncpg), then the batch is acked
(``multiple=True``) after the commit, its deliveries are sent straight to the three sinks
(bench/senders.py), and a second writer marks the delivered rows in batches (one
``UPDATE ... WHERE id = ANY``). No retries, no leases, no audit rows, no breakers: what is
left is the floor that the dispatcher's figures are a ratio to. At most ``IN_FLIGHT``
events are being sent at once (the writer waits for room, so memory stays bounded).

Configuration from the environment (set by bench/e2e.py): ``DISPATCHER_AMQP_URL``,
``BENCH_QUEUE``, ``BENCH_PG_DSN`` and the sinks (bench/senders.py).
"""

import asyncio
import os
from uuid import UUID, uuid4

import aio_pika
import asyncpg
import uvloop
from senders import Senders

from dispatcher.channels.base import OutboundMessage
from dispatcher.channels.webhook import render_body
from dispatcher.events.parse import ParsedEvent, parse_event

PREFETCH = 512
BATCH = 256
IN_FLIGHT = 512

INSERT_EVENTS = """
INSERT INTO events (id, schema_version, type, severity, occurred_at, subject_id, payload,
                    digest, delivery_count)
SELECT n.id, 1, n.type, n.severity, n.occurred_at, n.subject_id, n.payload::jsonb,
       n.digest, n.delivery_count
FROM unnest($1::uuid[], $2::text[], $3::text[], $4::timestamptz[], $5::text[], $6::text[],
            $7::bytea[], $8::smallint[])
     AS n(id, type, severity, occurred_at, subject_id, payload, digest, delivery_count)
ON CONFLICT (id) DO NOTHING
"""
INSERT_DELIVERIES = """
INSERT INTO deliveries (id, event_id, channel, recipient, priority)
SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::smallint[])
"""
MARK_DELIVERED = """
UPDATE deliveries SET status = 'delivered', attempts = 1, delivered_at = now(),
                      updated_at = now()
WHERE id = ANY($1::uuid[])
"""

Message = aio_pika.abc.AbstractIncomingMessage


class Limit:
    def __init__(self, db: asyncpg.Pool, send: Senders) -> None:
        self.db = db
        self.send = send
        self.arrived: list[Message] = []
        self.wake = asyncio.Event()
        self.delivered: list[UUID] = []
        self.delivered_wake = asyncio.Event()
        self.room = asyncio.Semaphore(IN_FLIGHT)
        self.tasks: set[asyncio.Task[None]] = set()
        self.endpoints = {"safety-monitor"}

    async def on_message(self, message: Message) -> None:
        self.arrived.append(message)
        self.wake.set()

    async def write_loop(self) -> None:
        while True:
            await self.wake.wait()
            batch, self.arrived = self.arrived[:BATCH], self.arrived[BATCH:]
            if not self.arrived:
                self.wake.clear()
            events = [
                p
                for m in batch
                if isinstance(
                    p := parse_event(
                        m.body, max_bytes=262_144, endpoints=self.endpoints
                    ),
                    ParsedEvent,
                )
            ]
            for _ in events:
                await self.room.acquire()
            rows = await self.store(events)
            await batch[-1].ack(multiple=True)
            for parsed, deliveries in zip(events, rows, strict=True):
                task = asyncio.create_task(self.deliver(parsed, deliveries))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)

    async def store(
        self, events: list[ParsedEvent]
    ) -> list[list[tuple[UUID, str, str]]]:
        """Insert the events and their deliveries in one transaction; per event, its
        deliveries as (id, channel, recipient)."""
        rows = [
            [(uuid4(), r.channel.value, r.to) for r in p.event.recipients]
            for p in events
        ]
        pairs = [
            (p.event, d) for p, mine in zip(events, rows, strict=True) for d in mine
        ]
        e = [p.event for p in events]
        async with self.db.acquire() as conn, conn.transaction():
            await conn.execute(
                INSERT_EVENTS,
                [x.event_id for x in e],
                [x.type for x in e],
                [x.severity.value for x in e],
                [x.occurred_at for x in e],
                [x.subject.id for x in e],
                [p.canonical for p in events],
                [p.digest for p in events],
                [len(x.recipients) for x in e],
            )
            await conn.execute(
                INSERT_DELIVERIES,
                [d[0] for _, d in pairs],
                [x.event_id for x, _ in pairs],
                [d[1] for _, d in pairs],
                [d[2] for _, d in pairs],
                [x.severity.priority for x, _ in pairs],
            )
        return rows

    async def deliver(
        self, parsed: ParsedEvent, deliveries: list[tuple[UUID, str, str]]
    ) -> None:
        event = parsed.event
        event_id = str(event.event_id)
        text = f"[{event.severity.value}] {event.type} (event {event_id})"
        sends = []
        for delivery_id, channel, to in deliveries:
            if channel == "email":
                sends.append(
                    self.send.mime_email(delivery_id, event.event_id, to, text)
                )
            elif channel == "sms":
                sends.append(self.send.sms(to, text))
            else:
                body = render_body(
                    OutboundMessage(
                        delivery_id=delivery_id,
                        event_id=event.event_id,
                        event_type=event.type,
                        severity=event.severity,
                        occurred_at=event.occurred_at.isoformat(),
                        subject_id=event.subject.id,
                        recipient=to,
                        data=event.data,
                        correlation_id=event.correlation_id,
                    )
                )
                sends.append(self.send.webhook(body, str(delivery_id)))
        try:
            done = await asyncio.gather(*sends, return_exceptions=True)
        finally:
            self.room.release()
        self.delivered.extend(
            d[0] for d, r in zip(deliveries, done, strict=True) if r is None
        )
        self.delivered_wake.set()

    async def mark_loop(self) -> None:
        while True:
            await self.delivered_wake.wait()
            self.delivered_wake.clear()
            ids, self.delivered = self.delivered, []
            async with self.db.acquire() as conn:
                await conn.execute(MARK_DELIVERED, ids)


async def main() -> None:
    env = os.environ
    db = await asyncpg.create_pool(env["BENCH_PG_DSN"], min_size=2, max_size=2)
    limit = Limit(db, Senders(env))
    connection = await aio_pika.connect_robust(env["DISPATCHER_AMQP_URL"])
    channel = await connection.channel()
    await channel.set_qos(prefetch_count=PREFETCH)
    queue = await channel.declare_queue(env["BENCH_QUEUE"], passive=True)
    writers = [
        asyncio.create_task(limit.write_loop()),
        asyncio.create_task(limit.mark_loop()),
    ]
    await queue.consume(limit.on_message)
    print("limit.serving", flush=True)
    await asyncio.gather(*writers)


if __name__ == "__main__":
    uvloop.run(main())
