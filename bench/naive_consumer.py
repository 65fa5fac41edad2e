"""Naive baseline: a plain aio-pika consumer, one transaction per message, same schema."""

import asyncio
import json
import os
import uuid

import aio_pika
import asyncpg

from dispatcher.events.parse import ParsedEvent, parse_event


async def main() -> None:
    db = await asyncpg.create_pool(os.environ["BENCH_PG_DSN"], min_size=4, max_size=4)
    connection = await aio_pika.connect_robust(os.environ["DISPATCHER_AMQP_URL"])
    channel = await connection.channel()
    await channel.set_qos(prefetch_count=100)
    queue = await channel.declare_queue(os.environ["BENCH_QUEUE"], passive=True)
    endpoints = {"safety-monitor"}

    async def handle(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        parsed = parse_event(message.body, max_bytes=262_144, endpoints=endpoints)
        if isinstance(parsed, ParsedEvent):
            e = parsed.event
            async with db.acquire() as conn, conn.transaction():
                await conn.execute(
                    "INSERT INTO events (id, schema_version, type, severity, occurred_at, subject_id,"
                    " payload, digest, delivery_count) VALUES ($1, 1, $2, $3, $4, $5, $6::jsonb, $7, $8)"
                    " ON CONFLICT DO NOTHING",
                    e.event_id,
                    e.type,
                    e.severity.value,
                    e.occurred_at,
                    e.subject.id,
                    parsed.canonical,
                    parsed.digest,
                    len(e.recipients),
                )
                for r in e.recipients:
                    await conn.execute(
                        "INSERT INTO deliveries (id, event_id, channel, recipient, priority)"
                        " VALUES ($1, $2, $3, $4, $5)",
                        uuid.uuid4(),
                        e.event_id,
                        r.channel.value,
                        r.to,
                        e.severity.priority,
                    )
                await conn.execute(
                    "INSERT INTO audit_log (kind, event_id, detail) VALUES ('event.received', $1, $2::jsonb)",
                    e.event_id,
                    json.dumps({"deliveries": len(e.recipients)}),
                )
        await message.ack()

    await queue.consume(handle)
    print("naive.serving", flush=True)
    await asyncio.Future()


if __name__ == "__main__":
    asyncio.run(main())
