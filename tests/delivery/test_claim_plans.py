"""Claims and outcomes are planned for each execution, never from a kept generic plan.

A generic plan made while ``deliveries`` was small scanned the whole of ``deliveries``
and ``events`` on every claim and every batch of outcomes, until an autoanalyze happened
to replace it (docs/benchmarks.md, "Why the drain had two speeds"). What each session
planned is in its ``pg_prepared_statements``; the claim connection and the recorder's are
asked once the backlog is delivered and both are idle.
"""

from typing import Any

import pytest

from dispatcher.events.kinds import ChannelKind
from dispatcher.sinks.webhook import WebhookSink
from tests.delivery.harness import StackFactory, event_to, webhook_channel

pytestmark = [pytest.mark.postgres, pytest.mark.rabbitmq]

MONITOR = ("webhook", "safety-monitor")
_PLANS = """
    SELECT statement, generic_plans, custom_plans FROM pg_prepared_statements
    WHERE statement LIKE '%UPDATE deliveries%'
      AND statement NOT LIKE '%pg_prepared_statements%'
"""


async def plans(conn: Any) -> list[tuple[int, int]]:
    """(generic, custom) plans of each statement of this session that updates deliveries."""
    rows = await conn.fetch(_PLANS)
    return [(r["generic_plans"], r["custom_plans"]) for r in rows]


async def test_claims_and_outcomes_never_run_a_generic_plan(
    stack: StackFactory, webhook_sink: WebhookSink
) -> None:
    """A backlog claimed and recorded in many statements runs every one of them on a
    plan made for its own arguments."""
    # Two slots and a long sweep: the backlog is claimed two rows at a time, by freed
    # slots, and once it is delivered nothing uses the two connections.
    channel = webhook_channel(
        webhook_sink.url,
        ["safety-monitor"],
        concurrency=2,
        critical_reserve=0,
        poll_interval=60.0,
    )
    async with stack(channels={"webhook": channel}) as s:
        await s.wait_listening_and_swept()
        ids = await s.publish(*[event_to(MONITOR) for _ in range(30)])
        await s.wait_final(ids, count=30)
        assert s.delivery is not None
        await s.delivery.recorder.flush()
        worker = s.delivery.workers[ChannelKind.WEBHOOK]
        assert worker.claims > 6
        claims = await plans(await worker._link.driver())
        outcomes = await plans(await s.delivery.recorder._link.driver())
    assert sum(custom for _, custom in claims) > 6
    assert sum(custom for _, custom in outcomes) > 6
    assert [generic for generic, _ in claims + outcomes] == [0] * len(claims + outcomes)
    assert len(webhook_sink.accepted) == 30
    assert webhook_sink.duplicates() == []
