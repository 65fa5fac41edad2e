"""The delivery metrics move in batches (``telemetry/metrics.py: _DeliveryTally``) and
still count every provider try, delivery and observation, whoever reads them and when."""

import threading
from dataclasses import dataclass

from dispatcher.telemetry import metrics
from dispatcher.telemetry.metrics import REGISTRY


@dataclass(frozen=True)
class Try:
    provider: str | None
    outcome: str
    error_class: str | None
    latency_ms: float | None


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def totals(channel: str) -> dict[str, float]:
    """The counters and histogram counts/sums of one (test-only) channel label."""
    tried = {"channel": channel, "provider": "relay-a"}
    return {
        "delivered_tries": value(
            "dispatcher_delivery_attempts_total",
            **tried,
            outcome="delivered",
            error_class="none",
        ),
        "failed_tries": value(
            "dispatcher_delivery_attempts_total",
            **tried,
            outcome="failed",
            error_class="timeout",
        ),
        "durations": value(
            "dispatcher_delivery_attempt_duration_seconds_count", **tried
        ),
        "duration_sum": value(
            "dispatcher_delivery_attempt_duration_seconds_sum", **tried
        ),
        "delivered": value(
            "dispatcher_deliveries_total",
            channel=channel,
            outcome="delivered",
            severity="high",
        ),
        "dead": value(
            "dispatcher_deliveries_total",
            channel=channel,
            outcome="dead",
            severity="high",
        ),
        "latencies": value(
            "dispatcher_delivery_latency_seconds_count",
            channel=channel,
            severity="high",
        ),
    }


def attempt(channel: str, i: int) -> None:
    """Even i: delivered at the first try; odd i: a timeout, then dead."""
    ok = Try("relay-a", "delivered", None, 2.0)
    failed = Try("relay-a", "failed", "timeout", 4.0)
    if i % 2 == 0:
        metrics.delivery_attempted(
            channel, "high", [ok], final="delivered", age_seconds=0.5
        )
    else:
        metrics.delivery_attempted(channel, "high", [failed], final="dead")


def test_every_attempt_counts_across_batches_and_reads() -> None:
    """Attempts spanning several flushes, read in between: each try, delivery and
    observation is counted once."""
    n = 3 * metrics.FLUSH_AFTER + 7
    before = totals("tally-a")
    for i in range(n):
        attempt("tally-a", i)
        if i % 100 == 0:
            totals("tally-a")  # a read in between moves what waits
    after = totals("tally-a")
    moved = {k: after[k] - before[k] for k in after}
    delivered, dead = (n + 1) // 2, n // 2
    assert moved == {
        "delivered_tries": delivered,
        "failed_tries": dead,
        "durations": n,
        "duration_sum": moved["duration_sum"],
        "delivered": delivered,
        "dead": dead,
        "latencies": delivered,
    }
    assert abs(moved["duration_sum"] - (delivered * 0.002 + dead * 0.004)) < 1e-9


def test_a_scraping_thread_loses_no_attempt() -> None:
    """A scrape thread (as ``metrics.serve``) collecting while attempts are added: the
    totals are exact afterwards."""
    n = 5000
    before = totals("tally-b")
    stop = threading.Event()

    def scrape() -> None:
        while not stop.is_set():
            list(REGISTRY.collect())

    scraper = threading.Thread(target=scrape)
    scraper.start()
    try:
        for i in range(n):
            attempt("tally-b", i)
    finally:
        stop.set()
        scraper.join()
    after = totals("tally-b")
    assert after["delivered_tries"] - before["delivered_tries"] == n // 2
    assert after["failed_tries"] - before["failed_tries"] == n // 2
    assert after["durations"] - before["durations"] == n
    assert after["latencies"] - before["latencies"] == n // 2


def test_a_scrape_filtered_by_name_sees_every_attempt() -> None:
    """``?name[]=`` scrapes (a restricted registry) count the attempts still waiting."""
    name = "dispatcher_delivery_attempts_total"
    labels = {
        "channel": "tally-c",
        "provider": "relay-a",
        "outcome": "delivered",
        "error_class": "none",
    }

    def filtered() -> float:
        for family in REGISTRY.restricted_registry([name]).collect():
            for sample in family.samples:
                if sample.name == name and sample.labels == labels:
                    return sample.value
        return 0.0

    before = filtered()
    for i in range(10):
        attempt("tally-c", 2 * i)
    assert filtered() - before == 10
