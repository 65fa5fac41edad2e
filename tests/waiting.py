"""The one way a test waits: for a condition or an event, up to a deadline, never a bare
sleep before an assertion."""

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar, overload

import pytest

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class NotYet:
    """A falsy condition result that says where things stand, shown if the wait fails."""

    state: object

    def __bool__(self) -> bool:
        return False

    def __repr__(self) -> str:
        return repr(self.state)


@overload
async def wait_for(
    condition: asyncio.Event, what: str, *, timeout: float = ..., interval: float = ...
) -> None: ...
@overload
async def wait_for(
    condition: Callable[[], Awaitable[T | NotYet]],
    what: str,
    *,
    timeout: float = ...,
    interval: float = ...,
) -> T: ...
@overload
async def wait_for(
    condition: Callable[[], T | NotYet],
    what: str,
    *,
    timeout: float = ...,
    interval: float = ...,
) -> T: ...
async def wait_for(
    condition: Callable[[], Any] | asyncio.Event,
    what: str,
    *,
    timeout: float = 30.0,
    interval: float = 0.05,
) -> Any:
    """Await an ``asyncio.Event``, or poll ``condition`` (sync or async) every
    ``interval`` seconds until it returns a truthy value, and return that value.

    Fails the test once ``timeout`` seconds have passed, with a message naming ``what``
    and the condition's last result (return ``NotYet(state)`` to show ``state``).
    """
    if isinstance(condition, asyncio.Event):
        try:
            async with asyncio.timeout(timeout):
                await condition.wait()
        except TimeoutError:
            pytest.fail(f"gave up after {timeout:g} s waiting for {what}")
        return None
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() >= deadline:
            pytest.fail(
                f"gave up after {timeout:g} s waiting for {what}; last: {value!r}"
            )
        await asyncio.sleep(interval)
