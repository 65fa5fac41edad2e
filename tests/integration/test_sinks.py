"""The local sink servers' one interface (start, go down, come up, received, stop), and
the webhook sink's own behaviour that tests and the demo lean on."""

import asyncio
import base64
from collections.abc import Awaitable, Callable
from email.message import EmailMessage
from typing import Any

import aiohttp
import aiosmtplib
import pytest

from dispatcher.sinks.base import Sink
from dispatcher.sinks.smtp import SmtpSink
from dispatcher.sinks.twilio import TwilioSink
from dispatcher.sinks.webhook import WebhookSink

SID = "AC" + "0" * 32
TOKEN = "sink-test-token"


async def _mail(sink: SmtpSink) -> None:
    message = EmailMessage()
    message["From"], message["To"] = "a@b.example", "c@d.example"
    await aiosmtplib.send(message, hostname=sink.host, port=sink.port, timeout=5)


async def _sms(sink: TwilioSink) -> None:
    basic = base64.b64encode(f"{SID}:{TOKEN}".encode()).decode()
    async with (
        aiohttp.ClientSession(headers={"Authorization": f"Basic {basic}"}) as http,
        http.post(
            f"{sink.base_url}/2010-04-01/Accounts/{SID}/Messages.json",
            data={"To": "+15550000001", "From": "+15550000002", "Body": "x"},
        ) as response,
    ):
        assert response.status == 201


async def _webhook(sink: WebhookSink) -> None:
    async with aiohttp.ClientSession() as http, http.post(sink.url("/a")) as response:
        assert response.status == 200


SINKS: dict[str, tuple[Callable[[], Sink[Any]], Callable[[Any], Awaitable[None]]]] = {
    "smtp": (SmtpSink, _mail),
    "twilio": (lambda: TwilioSink(SID, TOKEN), _sms),
    "webhook": (WebhookSink, _webhook),
}


async def _cut(sink: Sink[Any]) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """An idle client connection to the sink."""
    return await asyncio.open_connection(sink.host, sink.port)


@pytest.mark.parametrize("kind", SINKS)
async def test_every_sink_goes_down_and_comes_back_on_its_port(kind: str) -> None:
    """Each sink records what it accepts; go_down refuses new connections and cuts open
    ones; come_up listens on the same port again; stop ends it."""
    build, deliver = SINKS[kind]
    async with build() as sink:
        port = sink.port
        assert port != 0
        await deliver(sink)
        assert len(sink.received) == 1
        reader, writer = await _cut(sink)
        await sink.go_down()
        async with asyncio.timeout(5):
            while await reader.read(1024):  # an SMTP greeting, then the cut
                pass
        writer.close()
        with pytest.raises(ConnectionRefusedError):
            await _cut(sink)
        await sink.come_up()
        assert sink.port == port
        await deliver(sink)
        assert len(sink.received) == 2
    with pytest.raises(ConnectionRefusedError):
        await _cut(sink)


async def test_webhook_received_on_keeps_one_path() -> None:
    """received keeps every request in order; received_on only those to one path."""
    async with WebhookSink() as sink, aiohttp.ClientSession() as http:
        for path in ("/a", "/b", "/a"):
            async with http.post(sink.url(path), data=b"{}") as response:
                assert response.status == 200
        assert [r.path for r in sink.received] == ["/a", "/b", "/a"]
        assert [r.path for r in sink.received_on("/a")] == ["/a", "/a"]


async def test_latency_answers_200_after_a_delay_within_its_bounds() -> None:
    """`latency` delays each answer by at least its shortest delay, and accepts it."""
    async with WebhookSink(seed=7) as sink, aiohttp.ClientSession() as http:
        sink.latency("/slow", 0.05, 0.1)
        for n in range(3):
            started = asyncio.get_running_loop().time()
            async with http.post(
                sink.url("/slow"), data=b"{}", headers={"webhook-id": f"msg_{n}"}
            ) as response:
                assert response.status == 200
            assert asyncio.get_running_loop().time() - started >= 0.05
        assert [r.status for r in sink.received_on("/slow")] == [200, 200, 200]
        assert sorted(sink.accepted) == ["msg_0", "msg_1", "msg_2"]
