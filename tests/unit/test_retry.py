"""Retry decisions: full-jitter backoff, Retry-After as a lower bound, dead-letter reasons."""

import math
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from dispatcher.resilience.retry import (
    DeadLetter,
    DeadLetterReason,
    RetryAt,
    RetryPolicy,
    decide,
    parse_retry_after,
)

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
POLICY = RetryPolicy(max_attempts=8, base_delay=1.0, max_delay=300.0, max_age=86400.0)


def _decide(
    policy: RetryPolicy = POLICY,
    *,
    attempts: int = 1,
    age: float = 0.0,
    permanent: bool = False,
    retry_after: float | None = None,
    jitter: float = 1.0,
) -> RetryAt | DeadLetter:
    return decide(
        policy,
        attempts=attempts,
        created_at=NOW - timedelta(seconds=age),
        now=NOW,
        permanent=permanent,
        retry_after=retry_after,
        rand=lambda: jitter,
    )


def test_policy_defaults() -> None:
    """The default policy is 8 attempts, 1 s doubling to 300 s, one day, Retry-After up to 1 h."""
    policy = RetryPolicy()
    assert (policy.max_attempts, policy.base_delay, policy.max_delay) == (8, 1.0, 300.0)
    assert (policy.max_age, policy.retry_after_cap) == (86400.0, 3600.0)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        pytest.param(
            {"max_attempts": 0}, "greater than or equal to 1", id="no-attempts"
        ),
        pytest.param({"base_delay": 0}, "greater than 0", id="zero-base"),
        pytest.param({"base_delay": -1}, "greater than 0", id="negative-base"),
        pytest.param({"base_delay": math.nan}, "finite number", id="nan-base"),
        pytest.param({"max_delay": math.inf}, "finite number", id="infinite-max"),
        pytest.param({"max_age": 0}, "greater than 0", id="zero-age"),
        pytest.param(
            {"max_age": 4e8}, "less than or equal to", id="age-beyond-ten-years"
        ),
        pytest.param(
            {"retry_after_cap": -1}, "greater than or equal to 0", id="negative-cap"
        ),
        pytest.param(
            {"base_delay": 10, "max_delay": 5},
            "max_delay (5.0) must be >= base_delay (10.0)",
            id="max-below-base",
        ),
        pytest.param(
            {"jitter": True}, "Extra inputs are not permitted", id="unknown-field"
        ),
    ],
)
def test_policy_rejects_invalid_settings(fields: dict[str, Any], message: str) -> None:
    """An invalid policy fails validation with a message that names the problem."""
    with pytest.raises(
        ValidationError, match=message.replace("(", r"\(").replace(")", r"\)")
    ):
        RetryPolicy(**fields)


def test_policy_is_frozen() -> None:
    """A policy cannot be changed once built."""
    with pytest.raises(ValidationError, match="frozen"):
        POLICY.max_attempts = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    ("policy", "attempts", "jitter", "retry_after", "expected"),
    [
        pytest.param(POLICY, 1, 1.0, None, 1.0, id="first-failure-waits-base"),
        pytest.param(POLICY, 2, 1.0, None, 2.0, id="second-doubles"),
        pytest.param(POLICY, 4, 1.0, None, 8.0, id="fourth-is-base-times-8"),
        pytest.param(POLICY, 4, 0.5, None, 4.0, id="jitter-scales-ceiling"),
        pytest.param(POLICY, 4, 0.0, None, 0.0, id="zero-jitter-retries-now"),
        pytest.param(
            RetryPolicy(max_delay=10.0),
            7,
            1.0,
            None,
            10.0,
            id="ceiling-capped-by-max-delay",
        ),
        pytest.param(
            RetryPolicy(max_attempts=10**9),
            10**6,
            1.0,
            None,
            300.0,
            id="huge-attempts-no-overflow",
        ),
        pytest.param(POLICY, 1, 1.0, 120.0, 120.0, id="retry-after-above-backoff-wins"),
        pytest.param(POLICY, 4, 1.0, 3.0, 8.0, id="retry-after-below-backoff-ignored"),
        pytest.param(POLICY, 1, 0.0, 2.5, 2.5, id="retry-after-floors-zero-jitter"),
        pytest.param(POLICY, 1, 1.0, 7200.0, 3600.0, id="retry-after-capped"),
        pytest.param(
            POLICY, 1, 1.0, math.inf, 3600.0, id="infinite-retry-after-capped"
        ),
        pytest.param(POLICY, 1, 1.0, -5.0, 1.0, id="negative-retry-after-ignored"),
        pytest.param(POLICY, 1, 1.0, math.nan, 1.0, id="nan-retry-after-ignored"),
        pytest.param(
            RetryPolicy(retry_after_cap=0.0),
            1,
            0.0,
            60.0,
            0.0,
            id="zero-cap-disables-retry-after",
        ),
    ],
)
def test_decide_delay(
    policy: RetryPolicy,
    attempts: int,
    jitter: float,
    retry_after: float | None,
    expected: float,
) -> None:
    """A transient failure is retried after the jittered backoff, raised to Retry-After."""
    decision = _decide(
        policy, attempts=attempts, jitter=jitter, retry_after=retry_after
    )
    assert decision == RetryAt(at=NOW + timedelta(seconds=expected), delay=expected)


@pytest.mark.parametrize(
    ("policy", "attempts", "age", "permanent", "retry_after", "reason"),
    [
        pytest.param(
            POLICY, 1, 0.0, True, None, "permanent_error", id="permanent-on-first"
        ),
        pytest.param(
            POLICY, 8, 0.0, True, None, "permanent_error", id="permanent-beats-attempts"
        ),
        pytest.param(
            POLICY, 8, 86400.0, True, None, "permanent_error", id="permanent-beats-age"
        ),
        pytest.param(
            POLICY, 8, 0.0, False, None, "max_attempts", id="last-attempt-failed"
        ),
        pytest.param(
            POLICY, 9, 0.0, False, None, "max_attempts", id="beyond-max-attempts"
        ),
        pytest.param(
            RetryPolicy(max_attempts=1),
            1,
            0.0,
            False,
            None,
            "max_attempts",
            id="single-attempt",
        ),
        pytest.param(
            POLICY, 8, 86400.0, False, None, "max_attempts", id="attempts-beat-age"
        ),
        pytest.param(POLICY, 1, 86400.0, False, None, "max_age", id="already-too-old"),
        pytest.param(
            POLICY, 7, 86400.0 - 63.0, False, None, "max_age", id="delay-crosses-age"
        ),
        pytest.param(
            POLICY,
            1,
            86400.0 - 100.0,
            False,
            101.0,
            "max_age",
            id="retry-after-crosses-age",
        ),
    ],
)
def test_decide_dead_letter(
    policy: RetryPolicy,
    attempts: int,
    age: float,
    permanent: bool,
    retry_after: float | None,
    reason: str,
) -> None:
    """A delivery is dead-lettered for a permanent error, spent attempts or too great an age."""
    decision = _decide(
        policy, attempts=attempts, age=age, permanent=permanent, retry_after=retry_after
    )
    assert decision == DeadLetter(DeadLetterReason(reason))
    assert isinstance(decision, DeadLetter)
    assert decision.reason == reason


def test_retry_landing_exactly_on_max_age_is_allowed() -> None:
    """A retry due exactly at created_at + max_age is still scheduled."""
    decision = _decide(attempts=7, age=86400.0 - 64.0)
    assert decision == RetryAt(at=NOW + timedelta(seconds=64), delay=64.0)


def test_decide_uses_random_jitter_by_default() -> None:
    """Without an injected rand, the delay is drawn within the full-jitter range."""
    decision = decide(POLICY, attempts=3, created_at=NOW, now=NOW, permanent=False)
    assert isinstance(decision, RetryAt)
    assert 0.0 <= decision.delay <= 4.0


@pytest.mark.parametrize(
    ("attempts", "created_at", "now", "message"),
    [
        pytest.param(0, NOW, NOW, "attempts must be >= 1", id="zero-attempts"),
        pytest.param(
            1, NOW.replace(tzinfo=None), NOW, "timezone-aware", id="naive-created-at"
        ),
        pytest.param(
            1, NOW, NOW.replace(tzinfo=None), "timezone-aware", id="naive-now"
        ),
    ],
)
def test_decide_rejects_bad_arguments(
    attempts: int, created_at: datetime, now: datetime, message: str
) -> None:
    """Fewer than one attempt or a naive datetime is a programming error."""
    with pytest.raises(ValueError, match=message):
        decide(
            POLICY, attempts=attempts, created_at=created_at, now=now, permanent=False
        )


TEN_YEARS = 10 * 365 * 86400.0
delays = st.floats(min_value=1e-3, max_value=1e5)
policies = st.builds(
    lambda base, spread, attempts, age, cap: RetryPolicy(
        base_delay=base,
        max_delay=min(base * spread, TEN_YEARS),
        max_attempts=attempts,
        max_age=age,
        retry_after_cap=cap,
    ),
    base=delays,
    spread=st.floats(min_value=1.0, max_value=1e6),
    attempts=st.integers(min_value=1, max_value=10**6),
    age=st.floats(min_value=1e-3, max_value=TEN_YEARS),
    cap=st.floats(min_value=0.0, max_value=1e6),
)
unit = st.floats(min_value=0.0, max_value=1.0)
retry_afters = st.none() | st.floats(allow_nan=True, allow_infinity=True)


@given(policy=policies, attempts=st.integers(min_value=1, max_value=10**4), jitter=unit)
def test_full_jitter_stays_within_ceiling(
    policy: RetryPolicy, attempts: int, jitter: float
) -> None:
    """Without Retry-After, the delay lies in [0, min(max_delay, base * 2**(attempts-1))]."""
    decision = decide(
        policy.model_copy(update={"max_attempts": 10**9, "max_age": TEN_YEARS}),
        attempts=attempts,
        created_at=NOW,
        now=NOW,
        permanent=False,
        rand=lambda: jitter,
    )
    assert isinstance(decision, RetryAt)
    ceiling = min(
        Fraction(policy.max_delay), Fraction(policy.base_delay) * 2 ** (attempts - 1)
    )
    assert 0 <= Fraction(decision.delay) <= ceiling
    assert decision.at == NOW + timedelta(seconds=decision.delay)


@given(
    policy=policies,
    attempts=st.integers(min_value=1, max_value=10**4),
    jitter=unit,
    retry_after=st.floats(min_value=0.0, max_value=1e7),
)
def test_retry_after_is_a_lower_bound(
    policy: RetryPolicy, attempts: int, jitter: float, retry_after: float
) -> None:
    """A retry is never scheduled sooner than min(Retry-After, retry_after_cap)."""
    decision = decide(
        policy.model_copy(update={"max_attempts": 10**9, "max_age": TEN_YEARS}),
        attempts=attempts,
        created_at=NOW,
        now=NOW,
        permanent=False,
        retry_after=retry_after,
        rand=lambda: jitter,
    )
    assert isinstance(decision, RetryAt)
    assert decision.delay >= min(retry_after, policy.retry_after_cap)


@given(
    policy=policies,
    attempts=st.integers(min_value=1),
    age=st.floats(min_value=-1e6, max_value=1e9),
    permanent=st.booleans(),
    retry_after=retry_afters,
    jitter=unit,
)
def test_decide_never_raises(
    policy: RetryPolicy,
    attempts: int,
    age: float,
    permanent: bool,
    retry_after: float | None,
    jitter: float,
) -> None:
    """For any attempts >= 1, decide returns a decision that respects max_age."""
    decision = _decide(
        policy,
        attempts=attempts,
        age=age,
        permanent=permanent,
        retry_after=retry_after,
        jitter=jitter,
    )
    if isinstance(decision, RetryAt):
        assert math.isfinite(decision.delay)
        assert decision.delay >= 0.0
        assert age + decision.delay <= policy.max_age
    else:
        assert decision.reason in set(DeadLetterReason)


def _http_date(seconds: float) -> str:
    return format_datetime(NOW + timedelta(seconds=seconds), usegmt=True)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param("120", 120.0, id="delta-seconds"),
        pytest.param("0", 0.0, id="zero"),
        pytest.param("1.5", 1.5, id="fractional"),
        pytest.param("  30 ", 30.0, id="surrounding-space"),
        pytest.param("007", 7.0, id="leading-zeros"),
        pytest.param(_http_date(90), 90.0, id="imf-fixdate-future"),
        pytest.param(_http_date(-90), 0.0, id="imf-fixdate-past"),
        pytest.param("Sat, 01 Mar 2025 12:01:00 GMT", 60.0, id="imf-fixdate-literal"),
        pytest.param("Saturday, 01-Mar-25 12:02:00 GMT", 120.0, id="rfc850-date"),
        pytest.param("Sat Mar  1 12:03:00 2025", 180.0, id="asctime-date-as-utc"),
        pytest.param("Sat, 01 Mar 2025 14:05:00 +0200", 300.0, id="numeric-offset"),
        pytest.param(None, None, id="absent"),
        pytest.param("", None, id="empty"),
        pytest.param("soon", None, id="garbage"),
        pytest.param("-5", None, id="negative"),
        pytest.param("+5", None, id="signed"),
        pytest.param("1e3", None, id="exponent"),
        pytest.param("inf", None, id="infinity"),
        pytest.param("nan", None, id="nan"),
        pytest.param("1.", None, id="dangling-point"),
        pytest.param("9" * 400, None, id="overflows-float"),
        pytest.param("Sat, 01 Mar 2025 25:00:00 GMT", None, id="impossible-hour"),
        pytest.param("Fri, 31 Dec 99999 23:59:59 GMT", None, id="year-out-of-range"),
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    """Delta-seconds and HTTP-dates become seconds to wait; anything else is None."""
    assert parse_retry_after(value, now=NOW) == expected


@given(st.text())
def test_parse_retry_after_never_raises(value: str) -> None:
    """Any header text yields None or a finite, non-negative number of seconds."""
    seconds = parse_retry_after(value, now=NOW)
    assert seconds is None or (math.isfinite(seconds) and seconds >= 0.0)


@given(st.integers(min_value=0, max_value=10**9))
def test_parse_retry_after_round_trips_dates(seconds: int) -> None:
    """An HTTP-date n whole seconds ahead reads as n, as does the delta-seconds form."""
    assert parse_retry_after(_http_date(seconds), now=NOW) == seconds
    assert parse_retry_after(str(seconds), now=NOW) == seconds
