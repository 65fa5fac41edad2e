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
        assert [r.status for r in sink.requests("/slow")] == [200, 200, 200]
        assert sorted(sink.accepted) == ["msg_0", "msg_1", "msg_2"]
