"""A stand-in OTLP/HTTP collector for the e2e bench: accepts ``POST /v1/traces`` and
discards it, answering 200 with an empty (protobuf) ``ExportTraceServiceResponse``.

    .venv/bin/python bench/otlp_sink.py --port N

Runs in a process of its own, so its CPU is not the dispatcher's; counts requests and
bytes (``GET /count``). Prints ``otlp.ready`` once it listens.
"""

import argparse
import asyncio
import signal

import uvloop
from aiohttp import web


async def main(port: int) -> None:
    seen = {"requests": 0, "bytes": 0}

    async def traces(request: web.Request) -> web.Response:
        body = await request.read()
        seen["requests"] += 1
        seen["bytes"] += len(body)
        return web.Response(body=b"", content_type="application/x-protobuf")

    async def count(_request: web.Request) -> web.Response:
        return web.json_response(seen)

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/v1/traces", traces)
    app.router.add_get("/count", count)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print("otlp.ready", flush=True)
    await stop.wait()
    await runner.cleanup()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    uvloop.run(main(parser.parse_args().port))
