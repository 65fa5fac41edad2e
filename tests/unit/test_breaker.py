"""The circuit breaker, driven by a fake clock: opening, probing, closing and its hooks."""

from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)
from pydantic import ValidationError

from dispatcher.resilience.breaker import (
    _MAX_WINDOW_CALLS,
    BreakerSettings,
    BreakerSnapshot,
    BreakerState,
    CircuitBreaker,
    TransitionHook,
    TransitionReason,
)

CLOSED, OPEN, HALF_OPEN = BreakerState.CLOSED, BreakerState.OPEN, BreakerState.HALF_OPEN
#: Every edge of the state machine and the reasons it may carry.
EDGES = {
    (CLOSED, OPEN): {"consecutive_failures", "failure_rate"},
    (OPEN, HALF_OPEN): {"open_timeout"},
    (HALF_OPEN, OPEN): {"probe_failed"},
    (HALF_OPEN, CLOSED): {"probes_succeeded"},
}


class FakeClock:
    """A clock that moves only when a test moves it."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass
class Recorder:
    """A transition hook that remembers every call."""

    calls: list[tuple[str, BreakerState, BreakerState, str]] = field(
        default_factory=list
    )

    def __call__(
        self, name: str, old: BreakerState, new: BreakerState, reason: str
    ) -> None:
        self.calls.append((name, old, new, reason))


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


def _breaker(
    clock: FakeClock, *hooks: TransitionHook, **overrides: Any
) -> CircuitBreaker:
    return CircuitBreaker(
        "smtp", BreakerSettings(**overrides), clock=clock, on_transition=hooks
    )


def _trip(breaker: CircuitBreaker) -> None:
    for _ in range(breaker.settings.failure_threshold):
        assert breaker.allow()
        breaker.record_failure()
    assert breaker.state is OPEN


def _play(breaker: CircuitBreaker, outcomes: str) -> None:
    for outcome in outcomes:
        assert breaker.allow()
        if outcome == "S":
            breaker.record_success()
        else:
            breaker.record_failure()


def test_settings_defaults() -> None:
    """The defaults open on 5 failures or a 50% rate over 10 calls in 60 s, for 30 s."""
    assert BreakerSettings().model_dump() == {
        "failure_threshold": 5,
        "failure_rate": 0.5,
        "window": 60.0,
        "min_calls": 10,
        "open_seconds": 30.0,
        "half_open_probes": 1,
        "close_after": 1,
    }


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        pytest.param(
            {"failure_threshold": 0}, "greater than or equal to 1", id="threshold"
        ),
        pytest.param({"failure_rate": 0}, "greater than 0", id="zero-rate"),
        pytest.param(
            {"failure_rate": 1.5}, "less than or equal to 1", id="rate-above-1"
        ),
        pytest.param({"window": 0}, "greater than 0", id="zero-window"),
        pytest.param({"window": float("inf")}, "finite number", id="infinite-window"),
        pytest.param({"min_calls": 0}, "greater than or equal to 1", id="min-calls"),
        pytest.param({"open_seconds": -1}, "greater than 0", id="negative-open"),
        pytest.param(
            {"half_open_probes": 0}, "greater than or equal to 1", id="probes"
        ),
        pytest.param(
            {"close_after": 0}, "greater than or equal to 1", id="close-after"
        ),
        pytest.param(
            {"timeout": 3}, "Extra inputs are not permitted", id="unknown-field"
        ),
    ],
)
def test_settings_reject_invalid_values(fields: dict[str, Any], message: str) -> None:
    """Invalid breaker settings fail validation with a message that names the problem."""
    with pytest.raises(ValidationError, match=message):
        BreakerSettings(**fields)


def test_new_breaker_is_closed(clock: FakeClock) -> None:
    """A new breaker is closed, admits calls and has empty counters."""
    breaker = _breaker(clock)
    assert breaker.state is CLOSED
    assert breaker.allow()
    assert breaker.snapshot() == BreakerSnapshot(
        name="smtp",
        state=CLOSED,
        consecutive_failures=0,
        calls_in_window=0,
        failures_in_window=0,
        opened_at=None,
        retry_at=None,
    )


def test_default_clock_is_monotonic() -> None:
    """Without an injected clock the breaker uses time.monotonic and still works."""
    breaker = CircuitBreaker("smtp", BreakerSettings(failure_threshold=1))
    breaker.record_failure()
    assert breaker.state is OPEN
    assert not breaker.allow()


@pytest.mark.parametrize("threshold", [1, 3, 5], ids=["one", "three", "five"])
def test_consecutive_failures_open(
    clock: FakeClock, recorder: Recorder, threshold: int
) -> None:
    """failure_threshold consecutive failures open the breaker; one fewer does not."""
    breaker = _breaker(clock, recorder, failure_threshold=threshold, min_calls=100)
    _play(breaker, "F" * (threshold - 1))
    assert breaker.state is CLOSED
    _play(breaker, "F")
    assert breaker.state is OPEN
    assert recorder.calls == [("smtp", CLOSED, OPEN, "consecutive_failures")]
    assert not breaker.allow()


def test_success_resets_consecutive_failures(clock: FakeClock) -> None:
    """A success between failures restarts the consecutive count."""
    breaker = _breaker(clock, failure_threshold=3, min_calls=100)
    _play(breaker, "FFSFF")
    assert breaker.state is CLOSED
    assert breaker.snapshot().consecutive_failures == 2


@pytest.mark.parametrize(
    ("outcomes", "state"),
    [
        pytest.param("SSFF", OPEN, id="half-of-min-calls-opens"),
        pytest.param("SFSF", OPEN, id="interleaved-half-opens"),
        pytest.param("SSSF", CLOSED, id="quarter-stays-closed"),
        pytest.param("FSF", CLOSED, id="below-min-calls-stays-closed"),
        pytest.param("SSSSSFSF", CLOSED, id="rate-below-threshold"),
        pytest.param("SSSSFSFSF", CLOSED, id="one-third-stays-closed"),
        pytest.param("SSSSFFFF", OPEN, id="reaches-half-later"),
    ],
)
def test_failure_rate_opens(
    clock: FakeClock, recorder: Recorder, outcomes: str, state: BreakerState
) -> None:
    """With min_calls in the window, a failure ratio reaching failure_rate opens it."""
    breaker = _breaker(
        clock, recorder, failure_threshold=100, failure_rate=0.5, min_calls=4
    )
    _play(breaker, outcomes)
    assert breaker.state is state
    expected = [("smtp", CLOSED, OPEN, "failure_rate")] if state is OPEN else []
    assert recorder.calls == expected


def test_window_forgets_old_calls(clock: FakeClock) -> None:
    """Calls older than the window no longer count towards the failure rate."""
    breaker = _breaker(clock, failure_threshold=100, min_calls=4, window=60.0)
    _play(breaker, "FF")
    clock.now += 60.0
    _play(breaker, "SF")
    snapshot = breaker.snapshot()
    assert (snapshot.calls_in_window, snapshot.failures_in_window) == (2, 1)
    _play(breaker, "S")
    assert breaker.state is CLOSED


def test_old_successes_leaving_the_window_raise_the_rate(clock: FakeClock) -> None:
    """The rate is computed over the window only, so old successes stop diluting it."""
    breaker = _breaker(clock, failure_threshold=100, min_calls=4, window=60.0)
    _play(breaker, "SSSS")
    clock.now += 30.0
    _play(breaker, "FSF")
    assert breaker.state is CLOSED
    clock.now += 30.0
    _play(breaker, "F")
    assert breaker.state is OPEN


def test_window_memory_is_bounded(clock: FakeClock) -> None:
    """However busy the provider, the window keeps at most a fixed number of calls."""
    breaker = _breaker(clock, failure_threshold=10**9, min_calls=10)
    _play(breaker, "S" * (_MAX_WINDOW_CALLS + 100))
    _play(breaker, "SF" * 50)
    snapshot = breaker.snapshot()
    assert snapshot.calls_in_window == _MAX_WINDOW_CALLS
    assert snapshot.failures_in_window == 50


def test_open_refuses_until_open_seconds(clock: FakeClock, recorder: Recorder) -> None:
    """An open breaker refuses calls until open_seconds pass, then admits a probe."""
    breaker = _breaker(clock, recorder, failure_threshold=1, open_seconds=30.0)
    _trip(breaker)
    clock.now += 29.999
    assert not breaker.allow()
    assert breaker.state is OPEN
    clock.now += 0.001
    assert breaker.allow()
    assert breaker.state is HALF_OPEN
    assert recorder.calls[-1] == ("smtp", OPEN, HALF_OPEN, "open_timeout")


def test_state_reads_open_until_allow(clock: FakeClock, recorder: Recorder) -> None:
    """Reading state or a snapshot never moves an expired open breaker to half-open."""
    breaker = _breaker(clock, recorder, failure_threshold=1, open_seconds=30.0)
    _trip(breaker)
    clock.now += 300.0
    assert breaker.state is OPEN
    assert breaker.snapshot().state is OPEN
    assert len(recorder.calls) == 1
    assert breaker.allow()
    assert breaker.state is HALF_OPEN


@pytest.mark.parametrize("probes", [1, 3], ids=["one-probe", "three-probes"])
def test_half_open_limits_probes_in_flight(clock: FakeClock, probes: int) -> None:
    """While half-open, at most half_open_probes calls are admitted at once."""
    breaker = _breaker(
        clock, failure_threshold=1, half_open_probes=probes, close_after=5
    )
    _trip(breaker)
    clock.now += 30.0
    assert [breaker.allow() for _ in range(probes + 2)] == [True] * probes + [False] * 2
    breaker.record_success()
    assert breaker.allow()
    assert not breaker.allow()


def test_release_frees_a_probe_slot_without_counting(clock: FakeClock) -> None:
    """A released probe frees its slot and counts as neither success nor failure."""
    breaker = _breaker(clock, failure_threshold=1, close_after=1)
    _trip(breaker)
    clock.now += 30.0
    assert breaker.allow()
    assert not breaker.allow()
    breaker.release()
    assert breaker.state is HALF_OPEN
    assert breaker.allow()
    breaker.record_success()
    assert breaker.state is CLOSED


def test_release_is_a_no_op_when_closed_or_open(clock: FakeClock) -> None:
    """Releasing outside half-open changes nothing."""
    breaker = _breaker(clock, failure_threshold=1)
    assert breaker.allow()
    breaker.release()
    before = breaker.snapshot()
    _trip(breaker)
    breaker.release()
    assert breaker.state is OPEN
    assert before.calls_in_window == 0


def test_failed_probe_reopens_and_restarts_timer(
    clock: FakeClock, recorder: Recorder
) -> None:
    """A failed probe re-opens the breaker for another full open_seconds."""
    breaker = _breaker(clock, recorder, failure_threshold=1, open_seconds=30.0)
    _trip(breaker)
    clock.now += 45.0
    assert breaker.allow()
    breaker.record_failure()
    assert breaker.state is OPEN
    assert recorder.calls[-1] == ("smtp", HALF_OPEN, OPEN, "probe_failed")
    snapshot = breaker.snapshot()
    assert (snapshot.opened_at, snapshot.retry_at) == (clock.now, clock.now + 30.0)
    clock.now += 29.0
    assert not breaker.allow()
    clock.now += 1.0
    assert breaker.allow()


@pytest.mark.parametrize("close_after", [1, 3], ids=["one-success", "three-successes"])
def test_probe_successes_close_and_clear_window(
    clock: FakeClock, recorder: Recorder, close_after: int
) -> None:
    """close_after probe successes in a row close the breaker with a fresh window."""
    breaker = _breaker(clock, recorder, failure_threshold=3, close_after=close_after)
    _trip(breaker)
    clock.now += 30.0
    for _ in range(close_after - 1):
        assert breaker.allow()
        breaker.record_success()
        assert breaker.state is HALF_OPEN
    assert breaker.allow()
    breaker.record_success()
    assert breaker.state is CLOSED
    assert recorder.calls[-1] == ("smtp", HALF_OPEN, CLOSED, "probes_succeeded")
    snapshot = breaker.snapshot()
    assert (snapshot.calls_in_window, snapshot.consecutive_failures) == (0, 0)
    assert (snapshot.opened_at, snapshot.retry_at) == (None, None)
    _play(breaker, "FF")
    assert breaker.state is CLOSED


def test_results_while_open_are_ignored(clock: FakeClock) -> None:
    """Late results of calls admitted before the breaker opened change nothing."""
    breaker = _breaker(clock, failure_threshold=2)
    assert breaker.allow()
    assert breaker.allow()
    _trip(breaker)
    before = breaker.snapshot()
    breaker.record_success()
    breaker.record_failure()
    assert breaker.snapshot() == before


def test_half_open_result_without_probe_is_ignored(clock: FakeClock) -> None:
    """While half-open, a result with no probe in flight is ignored."""
    breaker = _breaker(clock, failure_threshold=1)
    _trip(breaker)
    clock.now += 30.0
    assert breaker.allow()
    breaker.release()
    breaker.record_failure()
    breaker.record_success()
    assert breaker.state is HALF_OPEN


def test_late_result_while_half_open_settles_a_probe(clock: FakeClock) -> None:
    """A late result reported while half-open counts as the probe's: the breaker can't tell."""
    breaker = _breaker(clock, failure_threshold=1)
    assert breaker.allow()
    _trip(breaker)
    clock.now += 30.0
    assert breaker.allow()
    breaker.record_success()
    assert breaker.state is CLOSED


def test_snapshot_while_open_and_half_open(clock: FakeClock) -> None:
    """A snapshot shows when the breaker opened and, while open, when a probe is due."""
    breaker = _breaker(clock, failure_threshold=2, open_seconds=30.0)
    _play(breaker, "SF")
    opened_at = clock.now
    _play(breaker, "F")
    assert breaker.snapshot() == BreakerSnapshot(
        name="smtp",
        state=OPEN,
        consecutive_failures=2,
        calls_in_window=3,
        failures_in_window=2,
        opened_at=opened_at,
        retry_at=opened_at + 30.0,
    )
    clock.now += 30.0
    assert breaker.allow()
    snapshot = breaker.snapshot()
    assert (snapshot.state, snapshot.opened_at, snapshot.retry_at) == (
        HALF_OPEN,
        opened_at,
        None,
    )


def test_hooks_see_every_transition_in_order(clock: FakeClock) -> None:
    """Every hook gets (name, old, new, reason) for each transition, after the change."""
    seen_states: list[BreakerState] = []
    first, second = Recorder(), Recorder()
    breaker: CircuitBreaker

    def peek(name: str, old: BreakerState, new: BreakerState, reason: str) -> None:
        seen_states.append(breaker.state)

    breaker = _breaker(
        clock, first, peek, second, failure_threshold=2, open_seconds=10.0
    )
    _trip(breaker)
    clock.now += 10.0
    assert breaker.allow()
    breaker.record_failure()
    clock.now += 10.0
    assert breaker.allow()
    breaker.record_success()
    expected = [
        ("smtp", CLOSED, OPEN, "consecutive_failures"),
        ("smtp", OPEN, HALF_OPEN, "open_timeout"),
        ("smtp", HALF_OPEN, OPEN, "probe_failed"),
        ("smtp", OPEN, HALF_OPEN, "open_timeout"),
        ("smtp", HALF_OPEN, CLOSED, "probes_succeeded"),
    ]
    assert first.calls == second.calls == expected
    assert seen_states == [new for _, _, new, _ in expected]
    assert all(isinstance(call[3], TransitionReason) for call in first.calls)


def test_raising_hook_does_not_break_the_breaker(
    clock: FakeClock, recorder: Recorder
) -> None:
    """A hook that raises is ignored: the transition happens and later hooks still run."""

    def boom(name: str, old: BreakerState, new: BreakerState, reason: str) -> None:
        raise RuntimeError(reason)

    breaker = _breaker(clock, boom, recorder, failure_threshold=1, open_seconds=5.0)
    _trip(breaker)
    clock.now += 5.0
    assert breaker.allow()
    breaker.record_success()
    assert breaker.state is CLOSED
    assert [call[3] for call in recorder.calls] == [
        "consecutive_failures",
        "open_timeout",
        "probes_succeeded",
    ]


breaker_settings = st.builds(
    BreakerSettings,
    failure_threshold=st.integers(min_value=1, max_value=5),
    failure_rate=st.sampled_from([0.25, 0.5, 0.75, 1.0]),
    window=st.integers(min_value=1, max_value=60).map(float),
    min_calls=st.integers(min_value=1, max_value=8),
    open_seconds=st.integers(min_value=1, max_value=30).map(float),
    half_open_probes=st.integers(min_value=1, max_value=3),
    close_after=st.integers(min_value=1, max_value=3),
)


@dataclass(eq=False)
class Call:
    """A call the machine was admitted for and has not reported yet."""

    episode: int
    probe: bool


class BreakerMachine(RuleBasedStateMachine):
    """Random clock steps, calls and outcomes, checked against the breaker's invariants.

    Calls admitted in an earlier state report only outside half-open: while half-open
    the breaker cannot tell them from probes (see
    ``test_late_result_while_half_open_settles_a_probe``).
    """

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.transitions: list[tuple[BreakerState, BreakerState, str]] = []
        self.checked = 0
        self.episode = 0
        self.probe_successes = 0
        self.consecutive_failures = 0
        self.pending: list[Call] = []

    @initialize(config=breaker_settings)
    def start(self, config: BreakerSettings) -> None:
        self.config = config
        self.breaker = CircuitBreaker(
            "machine", config, clock=self.clock, on_transition=[self.on_transition]
        )

    def on_transition(
        self, name: str, old: BreakerState, new: BreakerState, reason: str
    ) -> None:
        self.transitions.append((old, new, reason))
        self.episode += 1
        if new is HALF_OPEN:
            self.probe_successes = 0
        elif new is CLOSED:
            self.consecutive_failures = 0

    def probes(self) -> list[Call]:
        return [c for c in self.pending if c.probe and c.episode == self.episode]

    def reportable(self) -> list[Call]:
        return self.probes() if self.breaker.state is HALF_OPEN else self.pending

    @rule(seconds=st.integers(min_value=0, max_value=40))
    def tick(self, seconds: int) -> None:
        self.clock.now += seconds

    @rule()
    def request(self) -> None:
        before = self.breaker.snapshot()
        free_slot = len(self.probes()) < self.config.half_open_probes
        admitted = self.breaker.allow()
        state = self.breaker.state
        if before.state is CLOSED:
            assert admitted
        elif before.state is HALF_OPEN:
            assert admitted is free_slot
        elif before.state is OPEN:
            assert before.retry_at is not None
            if self.clock.now < before.retry_at:
                assert not admitted, "admitted while open before open_seconds"
                assert state is OPEN
            else:
                assert admitted
                assert state is HALF_OPEN
        if admitted:
            self.pending.append(Call(self.episode, probe=state is HALF_OPEN))

    @precondition(lambda self: bool(self.reportable()))
    @rule(data=st.data(), outcome=st.sampled_from(["success", "failure", "release"]))
    def report(self, data: st.DataObject, outcome: str) -> None:
        call = data.draw(st.sampled_from(self.reportable()))
        self.pending.remove(call)
        before = self.breaker.state
        getattr(
            self.breaker, "release" if outcome == "release" else f"record_{outcome}"
        )()
        after = self.breaker.state
        if before is OPEN:
            assert after is OPEN
        elif before is HALF_OPEN and outcome == "success":
            self.probe_successes += 1
            closes = self.probe_successes >= self.config.close_after
            assert after is (CLOSED if closes else HALF_OPEN)
        elif before is HALF_OPEN and outcome == "failure":
            assert after is OPEN
            assert self.breaker.snapshot().opened_at == self.clock.now
        elif before is HALF_OPEN:
            assert after is HALF_OPEN
        elif outcome != "release":
            self.check_closed_failure(failed=outcome == "failure")

    def check_closed_failure(self, *, failed: bool) -> None:
        """Checks a result reported while closed: it opens exactly when a limit is hit."""
        self.consecutive_failures = self.consecutive_failures + 1 if failed else 0
        snapshot = self.breaker.snapshot()
        by_count = self.consecutive_failures >= self.config.failure_threshold
        by_rate = (
            snapshot.calls_in_window >= self.config.min_calls
            and snapshot.failures_in_window
            >= self.config.failure_rate * snapshot.calls_in_window
        )
        if not failed:
            assert snapshot.state is CLOSED
        elif by_count:
            assert snapshot.state is OPEN
            assert self.transitions[-1] == (CLOSED, OPEN, "consecutive_failures")
        elif by_rate:
            assert snapshot.state is OPEN
            assert self.transitions[-1] == (CLOSED, OPEN, "failure_rate")
        else:
            assert snapshot.state is CLOSED
            assert snapshot.consecutive_failures == self.consecutive_failures

    @invariant()
    def probes_within_limit(self) -> None:
        if self.breaker.state is HALF_OPEN:
            assert len(self.probes()) <= self.config.half_open_probes

    @invariant()
    def transitions_follow_edges(self) -> None:
        state = self.transitions[self.checked - 1][1] if self.checked else CLOSED
        for old, new, reason in self.transitions[self.checked :]:
            assert old is state
            assert reason in EDGES[old, new]
            state = new
        self.checked = len(self.transitions)
        assert state is self.breaker.state

    @invariant()
    def snapshot_is_consistent(self) -> None:
        snapshot = self.breaker.snapshot()
        assert 0 <= snapshot.failures_in_window <= snapshot.calls_in_window
        if snapshot.state is CLOSED:
            assert snapshot.opened_at is None
        if snapshot.state is OPEN:
            assert snapshot.opened_at is not None
            assert snapshot.retry_at == snapshot.opened_at + self.config.open_seconds
        else:
            assert snapshot.retry_at is None


BreakerMachine.TestCase.settings = settings(max_examples=200, stateful_step_count=50)
TestBreakerMachine = BreakerMachine.TestCase
