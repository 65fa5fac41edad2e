"""Naive delivery baseline: consume the ingest queue and send directly, no outbox.

A plain aio-pika consumer (prefetch ``BENCH_PREFETCH``, handlers run concurrently) that
parses each event with the same parser as the dispatcher and sends its email, SMS and
webhook at once (bench/senders.py), and acks after all three succeeded. No database, no
retries, no breakers, no record of anything: the point is what the guarantees cost. A
failed send nacks with requeue (and re-sends the channels that had succeeded: there is no
record of them).

Configuration from the environment (set by bench/e2e.py): ``DISPATCHER_AMQP_URL``,
``BENCH_QUEUE``, ``BENCH_PREFETCH`` and the sinks (bench/senders.py).
"""

import asyncio
import json
import os

import aio_pika
import uvloop
from senders import Senders

from dispatcher.events.parse import ParsedEvent, parse_event


async def main() -> None:
    env = os.environ
    send = Senders(env)
    connection = await aio_pika.connect_robust(env["DISPATCHER_AMQP_URL"])
    channel = await connection.channel()
    await channel.set_qos(prefetch_count=int(env.get("BENCH_PREFETCH", "64")))
    queue = await channel.declare_queue(env["BENCH_QUEUE"], passive=True)
    endpoints = {"safety-monitor"}

    async def handle(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        parsed = parse_event(message.body, max_bytes=262_144, endpoints=endpoints)
        if not isinstance(parsed, ParsedEvent):
            await message.ack()
            return
        event = json.loads(message.body)
        event_id = event["event_id"]
        text = f"[{event['severity']}] {event['type']} (event {event_id})"
        sends = []
        for r in parsed.event.recipients:
            if r.channel.value == "email":
                sends.append(send.email(event_id, r.to, text))
            elif r.channel.value == "sms":
                sends.append(send.sms(r.to, text))
            else:
                body = json.dumps(
                    {"type": event["type"], "event_id": event_id, "data": event["data"]}
                ).encode()
                sends.append(send.webhook(body, f"{event_id}-{r.to}"))
        try:
            await asyncio.gather(*sends)
        except Exception:
            await message.nack(requeue=True)
            return
        await message.ack()

    await queue.consume(handle)
    print("naive.serving", flush=True)
    await asyncio.Future()


if __name__ == "__main__":
    uvloop.run(main())
