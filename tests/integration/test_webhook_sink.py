"""WebhookSink's own behaviour that tests and the demo lean on: waiting for arrivals."""

import asyncio

import aiohttp

from dispatcher.sinks.webhook import WebhookSink


async def test_wait_for_wakes_at_the_count_for_its_path() -> None:
    """wait_for returns once `count` requests reached its path, not before."""
    async with WebhookSink() as sink, aiohttp.ClientSession() as http:

        async def post(path: str) -> None:
            async with http.post(sink.url(path), data=b"{}") as response:
                assert response.status == 200

        waiting = asyncio.create_task(sink.wait_for(2, "/a"))
        anything = asyncio.create_task(sink.wait_for(1))
        await post("/b")
        async with asyncio.timeout(5):
            assert [r.path for r in await anything] == ["/b"]
        await post("/a")
        # The handler wakes waiters before it answers: one /a must not be enough.
        assert [(n, path, f.done()) for n, path, f in sink._waiters] == [
            (2, "/a", False)
        ]
        await post("/a")
        async with asyncio.timeout(5):
            assert [r.path for r in await waiting] == ["/a", "/a"]
        assert sink._waiters == []
