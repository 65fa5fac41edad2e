"""Direct sends to the bench's local sinks, shared by the hand-written baselines.

Email over a pool of reused aiosmtplib connections (built by the stdlib's
``EmailMessage`` for the naive baseline, as the dispatcher builds it for the limit), SMS with the twilio client (base URL
at the local sink), webhook with a pooled aiohttp session, signed as the dispatcher signs
(Standard Webhooks, ``dispatcher.channels.signing``). No retries, no breakers: the point
is what the dispatcher's guarantees cost (bench/naive_delivery.py, bench/limit_pipeline.py).

Configuration from the environment (set by bench/e2e.py): ``BENCH_SMTP_PORT``,
``BENCH_SMS_URL``, ``BENCH_WEBHOOK_URL``.
"""

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Mapping
from email.message import EmailMessage
from uuid import UUID

import aiohttp
import aiosmtplib
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.rest import Client

from dispatcher.channels.mime import plain_text_email
from dispatcher.channels.signing import decode_secret, signature_headers

SENDER = "dispatcher@example.org"
SECRET = "whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
SMS_SID = "AC" + "0" * 32
SMS_TOKEN = "bench-token-not-secret"
#: Connections to the SMTP sink (the dispatcher's default is 5 per relay; the naive
#: baseline has always used 16).
SMTP_POOL = 16


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


class Senders:
    """One sender per channel, each with its pooled connections."""

    def __init__(self, env: Mapping[str, str] = os.environ) -> None:
        self._smtp = SmtpPool(int(env["BENCH_SMTP_PORT"]), SMTP_POOL)
        self._twilio = Client(SMS_SID, SMS_TOKEN, http_client=AsyncTwilioHttpClient())
        self._twilio.api.base_url = env["BENCH_SMS_URL"]
        self._http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64))
        self._webhook_url = env["BENCH_WEBHOOK_URL"]
        self._key = decode_secret(SECRET)

    async def email(self, event_id: str, to: str, text: str) -> None:
        email = EmailMessage()
        email["From"] = SENDER
        email["To"] = to
        email["Subject"] = "crisis"
        email["X-Dispatcher-Event-Id"] = event_id
        email.set_content(text)
        async with self._smtp.client() as client:
            await client.send_message(email)

    async def mime_email(
        self, delivery_id: UUID, event_id: UUID, to: str, text: str
    ) -> None:
        """The email as the dispatcher writes it (``channels.mime``, not the stdlib's
        ``EmailMessage``, which costs about 1.6 ms a message)."""
        data = plain_text_email(
            sender=SENDER,
            recipient=to,
            subject="crisis",
            body=text,
            delivery_id=delivery_id,
            event_id=event_id,
        )
        async with self._smtp.client() as client:
            await client.sendmail(SENDER, [to], data)

    async def sms(self, to: str, text: str) -> None:
        await self._twilio.messages.create_async(to=to, from_="+15550009999", body=text)

    async def webhook(self, body: bytes, delivery_id: str) -> None:
        headers = signature_headers((self._key,), delivery_id, int(time.time()), body)
        headers["content-type"] = "application/json"
        async with self._http.post(
            self._webhook_url, data=body, headers=headers
        ) as response:
            await response.read()
            response.raise_for_status()
