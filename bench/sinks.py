"""The three delivery sinks in a process of their own, for bench/e2e.py.

    python bench/sinks.py --smtp-port P --sms-port P --webhook-port P --control-port P

Runs the project's real local servers (SmtpSink, TwilioSink, WebhookSink) on one uvloop
loop, so their CPU is not charged to the process under test nor to the bench's own loop.
A small control server (aiohttp, ``--control-port``) answers:

- ``GET /count``: deliveries received so far per channel;
- ``GET /dump``: every receipt as ``{channel: [[event_id, received_at], ...]}``; event ids
  are extracted here, after the run, never on the receiving path;
- ``POST /reset``: forget everything received;
- ``POST /{channel}/down`` and ``/{channel}/up``: stop listening (connection refused) and
  listen again on the same port.

Prints ``sinks.ready`` once every server listens.
"""

import argparse
import asyncio
import json
import re
import signal
from typing import Any

import uvloop
from aiohttp import web

from dispatcher.sinks.base import Sink
from dispatcher.sinks.smtp import SmtpSink
from dispatcher.sinks.twilio import TwilioSink
from dispatcher.sinks.webhook import WebhookSink

SMS_SID = "AC" + "0" * 32
SMS_TOKEN = "bench-token-not-secret"
_SMS_EVENT = re.compile(r"\(event ([0-9a-f-]{36})\)")


class Sinks:
    def __init__(self, args: argparse.Namespace) -> None:
        self.smtp = SmtpSink(port=args.smtp_port)
        self.sms = TwilioSink(
            port=args.sms_port, account_sid=SMS_SID, auth_token=SMS_TOKEN
        )
        self.webhook = WebhookSink(port=args.webhook_port)
        self.by_channel: dict[str, Sink[Any]] = {
            "email": self.smtp,
            "sms": self.sms,
            "webhook": self.webhook,
        }
        self.control_port = args.control_port

    async def start(self) -> None:
        for sink in self.by_channel.values():
            await sink.start()

    async def stop(self) -> None:
        for sink in self.by_channel.values():
            await sink.stop()

    def reset(self) -> None:
        for sink in self.by_channel.values():
            sink.received.clear()
        self.webhook.accepted.clear()

    def counts(self) -> dict[str, int]:
        return {name: len(sink.received) for name, sink in self.by_channel.items()}

    def dump(self) -> dict[str, list[tuple[str | None, float]]]:
        sms = []
        for r in self.sms.received:
            match = _SMS_EVENT.search(r.body)
            sms.append((match.group(1) if match else None, r.received_at))
        webhook = [
            (json.loads(w.body).get("event_id"), w.received_at)
            for w in self.webhook.received
            if w.status is not None and 200 <= w.status < 300
        ]
        return {
            "email": [(m.event_id, m.received_at) for m in self.smtp.received],
            "sms": sms,
            "webhook": webhook,
        }

    def app(self) -> web.Application:
        async def count(_request: web.Request) -> web.Response:
            return web.json_response(self.counts())

        async def dump(_request: web.Request) -> web.Response:
            return web.json_response(self.dump())

        async def reset(_request: web.Request) -> web.Response:
            self.reset()
            return web.json_response({})

        async def switch(request: web.Request) -> web.Response:
            channel, state = request.match_info["channel"], request.match_info["state"]
            sink = self.by_channel[channel]
            await (sink.go_down() if state == "down" else sink.come_up())
            return web.json_response({})

        app = web.Application()
        app.router.add_get("/count", count)
        app.router.add_get("/dump", dump)
        app.router.add_post("/reset", reset)
        app.router.add_post("/{channel}/{state:up|down}", switch)
        return app


async def main(args: argparse.Namespace) -> None:
    sinks = Sinks(args)
    await sinks.start()
    runner = web.AppRunner(sinks.app(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", args.control_port).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print("sinks.ready", flush=True)
    await stop.wait()
    await runner.cleanup()
    await sinks.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    for name in ("smtp", "sms", "webhook", "control"):
        parser.add_argument(f"--{name}-port", type=int, required=True)
    uvloop.run(main(parser.parse_args()))
