"""Claims are planned for each execution, never from a kept generic plan.

A generic plan made while ``deliveries`` was small scanned the whole of ``deliveries``
and ``events`` on every claim until an autoanalyze happened to replace it
(docs/benchmarks.md, "Why the drain had two speeds"). What the claim connection planned
is in its ``pg_prepared_statements``, asked once the backlog is delivered and it is idle.
Outcomes run one generic plan pinned to primary-key lookups instead (``OUTCOME_SESSION``,
checked by tests/integration/test_outcome_writes.py).
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


async def test_claims_never_run_a_generic_plan(
    stack: StackFactory, webhook_sink: WebhookSink
) -> None:
    """A backlog claimed in many statements runs every claim on a plan made for its own
    arguments."""
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
        worker = s.delivery.workers[ChannelKind.WEBHOOK]
        assert worker.claims > 6
        claims = await plans(await worker._link.driver())
    assert sum(custom for _, custom in claims) > 6
    assert [generic for generic, _ in claims] == [0] * len(claims)
    assert len(webhook_sink.accepted) == 30
    assert webhook_sink.duplicates() == []
