"""The one backoff rule: full jitter under a doubling, capped ceiling."""

import asyncio
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dispatcher.resilience.backoff import Backoff, ceiling


@pytest.mark.parametrize(
    ("failures", "expected"),
    [(1, 0.1), (2, 0.2), (3, 0.4), (6, 3.2), (7, 5.0), (10_000, 5.0)],
    ids=["first", "second", "third", "sixth", "capped", "huge-no-overflow"],
)
def test_ceiling_doubles_up_to_the_cap(failures: int, expected: float) -> None:
    """The ceiling starts at base, doubles per failure and stops at the cap."""
    assert ceiling(0.1, 5.0, failures) == pytest.approx(expected)


@given(
    base=st.floats(min_value=1e-6, max_value=10.0),
    extra=st.floats(min_value=0.0, max_value=100.0),
    failures=st.integers(min_value=1, max_value=5_000),
    draw=st.floats(min_value=0.0, max_value=1.0),
)
def test_delay_stays_within_the_ceiling(
    base: float, extra: float, failures: int, draw: float
) -> None:
    """Every delay lies in [0, min(cap, base * 2**(n-1))]."""
    cap = base + extra
    backoff = Backoff(base, cap, rand=lambda: draw)
    for _ in range(failures - 1):
        backoff.next_delay()
    delay = backoff.next_delay()
    assert 0.0 <= delay <= ceiling(base, cap, failures) <= cap


def test_reset_starts_again_from_base() -> None:
    """After a success the next failure waits at most ``base`` again."""
    backoff = Backoff(0.5, 30.0, rand=lambda: 1.0)
    assert [backoff.next_delay() for _ in range(4)] == [0.5, 1.0, 2.0, 4.0]
    backoff.reset()
    assert backoff.failures == 0
    assert backoff.next_delay() == 0.5


def test_replicas_do_not_retry_in_lockstep() -> None:
    """Two loops failing together draw different delays (the point of the jitter)."""
    first = Backoff(1.0, 60.0, rand=random.Random(1).random)
    second = Backoff(1.0, 60.0, rand=random.Random(2).random)
    pairs = [(first.next_delay(), second.next_delay()) for _ in range(5)]
    assert all(a != b for a, b in pairs)


async def test_wait_sleeps_the_drawn_delay() -> None:
    """``wait`` counts the failure and sleeps exactly what it draws."""
    backoff = Backoff(0.01, 0.02, rand=lambda: 1.0)
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await backoff.wait() == 0.01
    assert loop.time() - started >= 0.01
    assert backoff.failures == 1


@pytest.mark.parametrize(("base", "cap"), [(0.0, 1.0), (-1.0, 1.0), (2.0, 1.0)])
def test_rejects_a_bad_range(base: float, cap: float) -> None:
    """A base that is not positive, or above the cap, is a programming error."""
    with pytest.raises(ValueError, match="base"):
        Backoff(base, cap)
