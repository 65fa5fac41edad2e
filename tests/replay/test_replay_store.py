"""The SQL of replays against a real PostgreSQL: freeze, requeue once, skip, cancel."""

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from dispatcher.outbox import dead, replay_progress, replays, requeue
from dispatcher.outbox.dead import DeadFilter
from tests.api import seed

pytestmark = pytest.mark.postgres


@pytest.fixture
async def conn(engine: AsyncEngine) -> AsyncIterator[Any]:
    async with engine.connect() as c:
        driver = (await c.get_raw_connection()).driver_connection
        yield driver


async def dead_letters(
    engine: AsyncEngine, n: int, *, channel: str = "email", **event: Any
) -> list[uuid.UUID]:
    """``n`` events with one delivery each, dead-lettered as the recorder would."""
    docs = [
        seed.event(
            recipients=[
                {
                    "channel": channel,
                    "to": f"person{i}@example.org"
                    if channel == "email"
                    else "ops-hook",
                }
            ],
            **event,
        )
        for i in range(n)
    ]
    ids = await seed.events(engine, docs, key=None)
    out = []
    for event_id in ids:
        (delivery_id,) = (await seed.delivery_ids(engine, event_id)).values()
        await seed.attempt(
            engine,
            delivery_id,
            outcome="failed",
            error_class="auth",
            status="dead",
            provider="relay-1" if channel == "email" else "ops-hook",
        )
        out.append(delivery_id)
    return out


async def statuses(engine: AsyncEngine, ids: list[uuid.UUID]) -> list[str]:
    async with engine.connect() as c:
        rows = await c.execute(
            text("SELECT id, status FROM deliveries WHERE id = ANY(:ids)"), {"ids": ids}
        )
        found: dict[uuid.UUID, str] = {r.id: r.status for r in rows}
    return [found[i] for i in ids]


async def make(conn: Any, where: DeadFilter, **kw: Any) -> tuple[uuid.UUID, int]:
    async with conn.transaction():
        return await replays.create(
            conn,
            where,
            as_of=kw.pop("as_of", None) or await dead.now(conn),
            by="tester",
            reason="test",
            rate=kw.pop("rate", 10.0),
            max_age_seconds=kw.pop("max_age_seconds", None),
        )


async def test_plan_counts_groups_and_masks(engine: AsyncEngine, conn: Any) -> None:
    """A plan counts exactly, groups by channel, error class and endpoint, masks recipients."""
    await dead_letters(engine, 3)
    await dead_letters(engine, 2, channel="webhook", type="ops.page")
    p = await dead.plan(conn, DeadFilter(channels=("email",)), sample=2)
    assert (p.count, p.by_channel, p.by_error_class) == (3, {"email": 3}, {"auth": 3})
    assert p.by_endpoint == {"relay-1": 3}
    assert len(p.sample) == 2
    assert all("***" in s.recipient for s in p.sample)
    p = await dead.plan(conn, DeadFilter(type_prefix="ops.*"))
    assert (p.count, p.by_endpoint) == (2, {"ops-hook": 2})


async def test_the_frozen_set_is_what_was_planned(
    engine: AsyncEngine, conn: Any
) -> None:
    """Dead letters that arrive after the plan are not in a replay created from it."""
    await dead_letters(engine, 3)
    p = await dead.plan(conn, DeadFilter(channels=("email",)))
    await dead_letters(engine, 2)
    _, total = await make(conn, DeadFilter(channels=("email",)), as_of=p.as_of)
    assert total == p.count == 3


async def test_each_item_is_requeued_once_across_overlapping_replays(
    engine: AsyncEngine, conn: Any
) -> None:
    """Two overlapping replays and two runners requeue each delivery exactly once."""
    ids = await dead_letters(engine, 4)
    first, n1 = await make(conn, DeadFilter(delivery_ids=tuple(ids[:3])))
    second, n2 = await make(conn, DeadFilter(delivery_ids=tuple(ids)))
    assert (n1, n2) == (3, 1)  # the three waiting in the first are left out
    for replay_id in (first, second):
        await replay_progress.claim(conn, owner="a", lease_seconds=30, only=replay_id)
        step = await requeue.requeue(conn, replay_id, owner="a", limit=10)
        assert step.held
        again = await requeue.requeue(conn, replay_id, owner="a", limit=10)
        assert (again.requeued, again.skipped) == (0, 0)
    assert await statuses(engine, ids) == ["pending"] * 4
    rows = await replays.recent(conn)
    assert sorted(r.requeued for r in rows) == [1, 3]
    async with engine.connect() as c:
        replayed = await c.execute(
            text("SELECT count(*) FROM audit_log WHERE kind = 'delivery.replayed'")
        )
        assert replayed.scalar_one() == 4
        attempts = await c.execute(
            text("SELECT attempts, replay_id FROM deliveries WHERE id = :d"),
            {"d": ids[0]},
        )
        assert attempts.one() == (0, first)


async def test_a_runner_without_the_lease_requeues_nothing(
    engine: AsyncEngine, conn: Any
) -> None:
    """Only the lease holder requeues: a second runner's statement does nothing."""
    ids = await dead_letters(engine, 2)
    replay_id, _ = await make(conn, DeadFilter(delivery_ids=tuple(ids)))
    assert await replay_progress.claim(conn, owner="a", lease_seconds=30) is not None
    assert await replay_progress.claim(conn, owner="b", lease_seconds=30) is None
    step = await requeue.requeue(conn, replay_id, owner="b", limit=10)
    assert (step.held, step.requeued) == (False, 0)
    assert await statuses(engine, ids) == ["dead", "dead"]


async def test_skips_are_recorded_with_their_reason(
    engine: AsyncEngine, conn: Any
) -> None:
    """Too old for the horizon, or delivered meanwhile: skipped with the reason, not sent."""
    old = await dead_letters(engine, 1, occurred_at="2020-01-01T00:00:00+00:00")
    fresh = await dead_letters(engine, 2)
    replay_id, _ = await make(
        conn, DeadFilter(delivery_ids=(*old, *fresh)), max_age_seconds=3600
    )
    p = await dead.plan(conn, DeadFilter(delivery_ids=(*old, *fresh)))
    assert p.in_other_replay == 3
    async with engine.begin() as c:  # a late success recorded for one of them
        await c.execute(
            text("UPDATE deliveries SET status = 'delivered' WHERE id = :d"),
            {"d": fresh[0]},
        )
    await replay_progress.claim(conn, owner="a", lease_seconds=30)
    step = await requeue.requeue(conn, replay_id, owner="a", limit=10)
    assert (step.requeued, step.skipped) == (1, 2)
    async with engine.connect() as c:
        rows = await c.execute(
            text("SELECT delivery_id, state, reason FROM replay_items")
        )
        found = {r.delivery_id: (r.state, r.reason) for r in rows}
    assert found[old[0]] == ("skipped", "too_old")
    assert found[fresh[0]] == ("skipped", "already_delivered")
    assert found[fresh[1]] == ("requeued", None)


async def test_cancel_leaves_requeued_alone_and_stops_the_rest(
    engine: AsyncEngine, conn: Any
) -> None:
    """After a cancel nothing more is requeued; what was requeued stays requeued."""
    ids = await dead_letters(engine, 5)
    replay_id, _ = await make(conn, DeadFilter(delivery_ids=tuple(ids)))
    await replay_progress.claim(conn, owner="a", lease_seconds=30)
    await requeue.requeue(conn, replay_id, owner="a", limit=2)
    async with conn.transaction():
        row = await replays.cancel(conn, replay_id, by="tester")
    assert row is not None
    assert (row.status, row.requeued, row.skipped) == ("cancelled", 2, 3)
    step = await requeue.requeue(conn, replay_id, owner="a", limit=10)
    assert (step.held, step.requeued) == (False, 0)
    assert sorted(await statuses(engine, ids)) == ["dead"] * 3 + ["pending"] * 2


async def test_discard_keeps_the_rows_and_audits_them(
    engine: AsyncEngine, conn: Any
) -> None:
    """Discarded dead letters stay in the table with status discarded, each audited."""
    ids = await dead_letters(engine, 3)
    as_of = await dead.now(conn)
    counts = await dead.discard(
        conn, DeadFilter(channels=("email",)), as_of=as_of, by="tester", reason="stale"
    )
    assert counts == {"email": 3}
    assert await statuses(engine, ids) == ["discarded"] * 3
    async with engine.connect() as c:
        n = await c.execute(
            text("SELECT count(*) FROM audit_log WHERE kind = 'delivery.discarded'")
        )
        assert n.scalar_one() == 4  # one per delivery and the summary


async def test_a_requeued_delivery_is_no_longer_marked_mirrored(
    engine: AsyncEngine, conn: Any
) -> None:
    """Requeue clears ``mirrored_at``: the mark was for the death the replay undid, and a
    delivery that dies again must be mirrored again."""
    ids = await dead_letters(engine, 2)
    async with engine.begin() as c:
        await c.execute(text("UPDATE deliveries SET mirrored_at = now()"))
    replay_id, _ = await make(conn, DeadFilter(delivery_ids=(ids[0],)))
    await replay_progress.claim(conn, owner="a", lease_seconds=30)
    await requeue.requeue(conn, replay_id, owner="a", limit=10)
    async with engine.connect() as c:
        rows = await c.execute(text("SELECT id, status, mirrored_at FROM deliveries"))
        found = {r.id: (r.status, r.mirrored_at is None) for r in rows}
    assert found == {ids[0]: ("pending", True), ids[1]: ("dead", False)}


async def test_requeue_takes_the_most_urgent_first(
    engine: AsyncEngine, conn: Any
) -> None:
    """The order is frozen with the set: by priority, then the oldest death first."""
    ids = await dead_letters(engine, 4)
    urgency = {ids[0]: (3, 1), ids[1]: (1, 2), ids[2]: (1, 1), ids[3]: (2, 0)}
    async with engine.begin() as c:
        for delivery_id, (priority, minutes) in urgency.items():
            await c.execute(
                text(
                    "UPDATE deliveries SET priority = :p,"
                    " dead_at = now() - make_interval(mins => :m) WHERE id = :d"
                ),
                {"p": priority, "m": 10 - minutes, "d": delivery_id},
            )
    replay_id, _ = await make(conn, DeadFilter(delivery_ids=tuple(ids)))
    await replay_progress.claim(conn, owner="a", lease_seconds=30)
    order: list[uuid.UUID] = []
    for _ in ids:
        await requeue.requeue(conn, replay_id, owner="a", limit=1)
        async with engine.connect() as c:
            rows = await c.execute(
                text("SELECT id FROM deliveries WHERE status = 'pending'")
            )
            order.extend({r.id for r in rows} - set(order))
    assert order == [ids[2], ids[1], ids[3], ids[0]]
