"""The tests' one wait helper: returns what the condition found, or fails naming it."""

import asyncio

import pytest

from tests.waiting import NotYet, wait_for


async def test_returns_the_first_truthy_result_of_a_sync_or_async_condition() -> None:
    """Polls until the condition holds and hands back its value."""
    calls: list[int] = []

    def grows() -> list[int] | None:
        calls.append(1)
        return list(calls) if len(calls) >= 3 else None

    async def at_once() -> str:
        return "ready"

    assert await wait_for(grows, "three calls", interval=0.001) == [1, 1, 1]
    assert await wait_for(at_once, "an async condition") == "ready"


async def test_a_set_event_ends_the_wait() -> None:
    """An asyncio.Event is awaited, not polled."""
    event = asyncio.Event()
    asyncio.get_running_loop().call_soon(event.set)
    await wait_for(event, "the event")


async def test_timeout_fails_naming_what_and_the_last_state() -> None:
    """A condition that never holds fails the test with what it waited for."""
    with pytest.raises(
        pytest.fail.Exception, match=r"waiting for the queue to drain; last: 3"
    ):
        await wait_for(lambda: NotYet(3), "the queue to drain", timeout=0.05)
    with pytest.raises(pytest.fail.Exception, match="waiting for the event"):
        await wait_for(asyncio.Event(), "the event", timeout=0.01)
