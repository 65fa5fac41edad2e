"""The SMTP pool's admission: reserved places for critical sends, critical sends first,
first come first served within each kind, and no place lost to a cancelled waiter."""

import asyncio

import pytest

from dispatcher.channels.smtppool import _Gate


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def _start(
    gate: _Gate, order: list[str], name: str, *, critical: bool
) -> asyncio.Task[None]:
    async def take() -> None:
        await gate.acquire(critical=critical)
        order.append(name)

    return asyncio.create_task(take())


async def test_other_sends_never_take_the_reserved_places() -> None:
    """With 3 places and 1 reserved, the third general send waits; a critical one does not."""
    gate, order = _Gate(3, 1), list[str]()
    tasks = [_start(gate, order, f"low-{n}", critical=False) for n in range(3)]
    await _settle()
    assert order == ["low-0", "low-1"]
    tasks.append(_start(gate, order, "critical", critical=True))
    await _settle()
    assert order == ["low-0", "low-1", "critical"]
    gate.release(critical=True)
    await _settle()
    assert order == ["low-0", "low-1", "critical"]  # the freed place is reserved
    gate.release(critical=False)
    await asyncio.gather(*tasks)
    assert order[-1] == "low-2"


async def test_a_freed_place_goes_to_the_critical_waiter_first() -> None:
    """Critical waiters are served before general waiters that came earlier, and each
    kind in arrival order."""
    gate, order = _Gate(1, 0), list[str]()
    await gate.acquire(critical=False)
    tasks = [
        _start(gate, order, "low-1", critical=False),
        _start(gate, order, "low-2", critical=False),
    ]
    await _settle()
    tasks += [
        _start(gate, order, "critical-1", critical=True),
        _start(gate, order, "critical-2", critical=True),
    ]
    await _settle()
    for critical in (False, True, True, False):
        gate.release(critical=critical)
        await _settle()
    await asyncio.gather(*tasks)
    assert order == ["critical-1", "critical-2", "low-1", "low-2"]


@pytest.mark.parametrize("handed_over", [False, True], ids=["waiting", "handed-over"])
async def test_a_cancelled_waiter_loses_no_place(handed_over: bool) -> None:
    """A waiter cancelled while waiting, or just as a place was handed to it, leaves the
    place to the next waiter."""
    gate, order = _Gate(1, 0), list[str]()
    await gate.acquire(critical=False)
    first = _start(gate, order, "cancelled", critical=False)
    second = _start(gate, order, "next", critical=False)
    await _settle()
    if handed_over:
        gate.release(critical=False)  # the place is the first waiter's now ...
        first.cancel()  # ... but it is cancelled before it runs
    else:
        first.cancel()
        await _settle()
        gate.release(critical=False)
    await asyncio.gather(first, return_exceptions=True)
    await asyncio.wait_for(second, 1)
    assert order == ["next"]
    gate.release(critical=False)
    # Nothing leaked: the one place is free again.
    await asyncio.wait_for(gate.acquire(critical=True), 1)
