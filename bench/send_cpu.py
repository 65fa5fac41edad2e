"""CPU per send of the channel adapters, and per received message of the local sinks.

    PYTHONPATH=$PWD .venv/bin/python bench/send_cpu.py [--sends 3000] [--concurrency 32]
                                                        [--channels sms,email,webhook]
                                                        [--profile sms.prof]

The sinks (bench/sinks.py) run in a process of their own, as in bench/e2e.py. For each
channel, this process sends ``--sends`` messages through the project's real adapter with
``--concurrency`` sends in flight, after a warm-up of 200 that opens the connections.
Reported per channel: CPU µs per send in this process (``time.process_time``: the
adapter, plus this bench's loop and message building) and CPU µs per message in the sink
process (psutil), each the median of ``--repeat`` rounds. ``--profile FILE`` writes a
cProfile of the timed sends of the first channel given; ``--spy FILE`` records the sink
process with py-spy (folded stacks) for the whole run.
"""

import argparse
import asyncio
import cProfile
import json
import signal
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import uvloop
from e2e import SECRET, SMS_SID, SMS_TOKEN, free_port

from dispatcher.channels.base import Channel, OutboundMessage
from dispatcher.channels.email import SmtpChannel
from dispatcher.channels.email_config import SmtpProvider
from dispatcher.channels.sms import TwilioChannel
from dispatcher.channels.sms_config import TwilioProvider
from dispatcher.channels.webhook import WebhookChannel
from dispatcher.channels.webhook_config import WebhookChannelConfig
from dispatcher.testing import make_message

ROOT = Path(__file__).resolve().parents[1]
WARMUP = 200


def channels(ports: dict[str, int]) -> dict[str, tuple[Channel, str]]:
    sms = TwilioChannel(
        TwilioProvider(
            name="twilio-1",
            account_sid=SMS_SID,
            auth_token=SMS_TOKEN,
            from_number="+15550009999",
            base_url=f"http://127.0.0.1:{ports['sms']}",
        )
    )
    email = SmtpChannel(
        SmtpProvider(
            name="relay-1",
            host="127.0.0.1",
            port=ports["smtp"],
            tls="none",
            from_address="dispatcher@example.org",
            pool_size=16,
        )
    )
    webhook = WebhookChannel(
        WebhookChannelConfig.model_validate(
            {
                "endpoints": {
                    "safety-monitor": {
                        "url": f"http://127.0.0.1:{ports['webhook']}/safety-monitor",
                        "secrets": [SECRET],
                    }
                },
                "allow_http": True,
                "allow_private_networks": ["127.0.0.0/8"],
            }
        )
    )
    return {
        "sms": (sms, "+15551234567"),
        "email": (email, "crisis-team@example.org"),
        "webhook": (webhook, "safety-monitor"),
    }


async def run(
    send: Callable[[OutboundMessage], Awaitable[object]],
    messages: list[OutboundMessage],
    concurrency: int,
) -> None:
    pending = iter(messages)

    async def lane() -> None:
        for message in pending:
            await send(message)

    async with asyncio.TaskGroup() as group:
        for _ in range(concurrency):
            group.create_task(lane())


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    ports = {c: free_port() for c in ("smtp", "sms", "webhook", "control")}
    sinks = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "sinks.py")]
        + [f"--{c}-port={p}" for c, p in ports.items()],
        stdout=subprocess.PIPE,
    )
    assert sinks.stdout is not None
    if b"sinks.ready" not in sinks.stdout.readline():
        raise RuntimeError("sinks did not start")
    sink_ps = psutil.Process(sinks.pid)
    spy = None
    if args.spy is not None:
        spy = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "py-spy"),
                "record",
                "--pid",
                str(sinks.pid),
                "--format",
                "raw",
                "--rate",
                "500",
                "-o",
                str(args.spy),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    built = channels(ports)
    report: dict[str, Any] = {"sends": args.sends, "concurrency": args.concurrency}
    profiler = cProfile.Profile() if args.profile else None
    try:
        async with aiohttp.ClientSession() as control:
            for name in args.channels:
                channel, recipient = built[name]
                send = channel.send
                await run(
                    send, [make_message(recipient=recipient)] * WARMUP, args.concurrency
                )
                client_us, sink_us = [], []
                for _ in range(args.repeat):
                    messages = [
                        make_message(recipient=recipient, event_id=uuid.uuid4())
                        for _ in range(args.sends)
                    ]
                    async with control.post(
                        f"http://127.0.0.1:{ports['control']}/reset"
                    ):
                        pass
                    t = sink_ps.cpu_times()
                    sink0 = t.user + t.system
                    cpu0 = time.process_time()
                    if profiler is not None and name == args.channels[0]:
                        profiler.enable()
                    await run(send, messages, args.concurrency)
                    if profiler is not None:
                        profiler.disable()
                    client_us.append((time.process_time() - cpu0) * 1e6 / args.sends)
                    # The sink answered every request before the last send returned.
                    t = sink_ps.cpu_times()
                    sink_us.append((t.user + t.system - sink0) * 1e6 / args.sends)
                report[name] = {
                    "client_us_per_send": round(statistics.median(client_us), 1),
                    "sink_us_per_message": round(statistics.median(sink_us), 1),
                    "client_runs": [round(x, 1) for x in client_us],
                    "sink_runs": [round(x, 1) for x in sink_us],
                }
                await channel.aclose()
                print(name, json.dumps(report[name]), flush=True)
    finally:
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(60)
        sinks.terminate()
        sinks.wait(30)
    if profiler is not None:
        profiler.dump_stats(args.profile)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sends", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--channels",
        type=lambda s: s.split(","),
        default=["sms", "email", "webhook"],
    )
    parser.add_argument("--profile", type=Path)
    parser.add_argument("--spy", type=Path)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    report = uvloop.run(measure(args))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
