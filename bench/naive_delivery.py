"""Naive delivery baseline: consume the ingest queue and send directly, no outbox.

A plain aio-pika consumer (prefetch ``BENCH_PREFETCH``, handlers run concurrently) that
parses each event with the same parser as the dispatcher and sends its email (aiosmtplib
over a pool of reused connections), SMS (the twilio client, base URL pointed at the local
sink) and webhook (aiohttp POST, Standard Webhooks signature) at once, and acks after all
three succeeded. No database, no retries, no breakers, no record of anything: the point is
what the guarantees cost. A failed send nacks with requeue (and re-sends the channels that
had succeeded: there is no record of them).

Configuration from the environment (set by bench/e2e.py): ``DISPATCHER_AMQP_URL``,
``BENCH_QUEUE``, ``BENCH_SMTP_PORT``, ``BENCH_SMS_URL``, ``BENCH_WEBHOOK_URL``,
``BENCH_PREFETCH``.
"""

import asyncio
import contextlib
import json
import os
import time
from collections.abc import AsyncIterator
from email.message import EmailMessage

import aio_pika
import aiohttp
import aiosmtplib
import uvloop
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.rest import Client

from dispatcher.channels.signing import decode_secret, signature_headers
from dispatcher.events.parse import ParsedEvent, parse_event

SECRET = "whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
SMS_SID = "AC" + "0" * 32
SMS_TOKEN = "bench-token-not-secret"


class SmtpPool:
    def __init__(self, port: int, size: int) -> None:
        self._port = port
        self._slots = asyncio.Semaphore(size)
        self._idle: list[aiosmtplib.SMTP] = []

    @contextlib.asynccontextmanager
    async def client(self) -> AsyncIterator[aiosmtplib.SMTP]:
        async with self._slots:
            client = self._idle.pop() if self._idle else None
            if client is None or not client.is_connected:
                client = aiosmtplib.SMTP(hostname="127.0.0.1", port=self._port)
                await client.connect()
            try:
                yield client
            except BaseException:
                client.close()
                raise
            self._idle.append(client)


async def main() -> None:
    env = os.environ
    smtp = SmtpPool(int(env["BENCH_SMTP_PORT"]), 16)
    twilio = Client(SMS_SID, SMS_TOKEN, http_client=AsyncTwilioHttpClient())
    twilio.api.base_url = env["BENCH_SMS_URL"]
    http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64))
    webhook_url = env["BENCH_WEBHOOK_URL"]
    key = decode_secret(SECRET)
    connection = await aio_pika.connect_robust(env["DISPATCHER_AMQP_URL"])
    channel = await connection.channel()
    await channel.set_qos(prefetch_count=int(env.get("BENCH_PREFETCH", "64")))
    queue = await channel.declare_queue(env["BENCH_QUEUE"], passive=True)
    endpoints = {"safety-monitor"}

    async def send_email(event_id: str, to: str, text: str) -> None:
        email = EmailMessage()
        email["From"] = "dispatcher@example.org"
        email["To"] = to
        email["Subject"] = "crisis"
        email["X-Dispatcher-Event-Id"] = event_id
        email.set_content(text)
        async with smtp.client() as client:
            await client.send_message(email)

    async def send_sms(to: str, text: str) -> None:
        await twilio.messages.create_async(to=to, from_="+15550009999", body=text)

    async def send_webhook(event: dict[str, object], delivery_id: str) -> None:
        body = json.dumps(
            {
                "type": event["type"],
                "event_id": event["event_id"],
                "data": event["data"],
            }
        ).encode()
        headers = signature_headers((key,), delivery_id, int(time.time()), body)
        headers["content-type"] = "application/json"
        async with http.post(webhook_url, data=body, headers=headers) as response:
            await response.read()
            response.raise_for_status()

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
                sends.append(send_email(event_id, r.to, text))
            elif r.channel.value == "sms":
                sends.append(send_sms(r.to, text))
            else:
                sends.append(send_webhook(event, f"{event_id}-{r.to}"))
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
