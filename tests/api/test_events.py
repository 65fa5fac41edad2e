"""GET /v1/events: every filter, combined filters and keyset pagination edges."""

from typing import Any

import pytest

from tests.api.conftest import Api
from tests.api.world import World, build

pytestmark = pytest.mark.postgres


@pytest.fixture
async def world(engine) -> World:
    return await build(engine)


async def ids(api: Api, **params: Any) -> set[str]:
    page = await api.ok("/v1/events", limit=250, **params)
    assert page["done"] is True
    return {e["event_id"] for e in page["data"]}


def s(*values: Any) -> set[str]:
    return {str(v) for v in values}


async def test_each_filter(api: Api, world: World) -> None:
    """Each filter alone selects exactly the events it names."""
    w = world
    crisis = s(w.alert, w.escalation, *w.bulk)
    assert await ids(api) == crisis | s(w.checkin)
    assert await ids(api, type="crisis.escalated") == s(w.escalation)
    assert await ids(api, type="crisis.*") == crisis
    assert await ids(api, type="crisis.detected") == s(w.alert, *w.bulk)
    assert await ids(api, type="crisis") == set()  # exact, not a prefix
    assert await ids(api, severity=["critical", "high"]) == s(w.alert, w.escalation)
    assert await ids(api, subject_id="person-alpha") == s(w.alert, w.escalation)
    assert await ids(api, correlation_id="corr-1") == s(w.alert)
    assert await ids(api, occurred_before="2026-06-01T00:00:00Z") == s(w.checkin)
    assert await ids(api, occurred_after="2026-06-01T00:00:00Z") == crisis
    assert await ids(api, received_after="2000-01-01T00:00:00Z") == crisis | s(
        w.checkin
    )
    assert await ids(api, received_before="2000-01-01T00:00:00Z") == set()
    assert await ids(api, delivery_status="dead") == s(w.alert)
    assert await ids(api, delivery_status=["pending"]) == s(w.alert, w.escalation)
    assert await ids(api, delivery_status="in_flight") == set()


async def test_filters_combine_with_and(api: Api, world: World) -> None:
    """Several filters narrow together: the critical crisis alerts for a subject not
    delivered yet."""
    found = await ids(
        api,
        type="crisis.*",
        severity="critical",
        subject_id="person-alpha",
        delivery_status=["pending", "dead"],
    )
    assert found == s(world.alert)
    assert await ids(api, subject_id="person-alpha", severity="low") == set()


async def test_pages_walk_everything_once_in_stable_order(
    api: Api, world: World
) -> None:
    """Pages of 3 return every event once, newest first, ending with done and no iterator
    (many rows share one received_at, so the id breaks ties)."""
    seen: list[dict[str, Any]] = []
    params: dict[str, Any] = {"limit": 3}
    for _ in range(10):
        page = await api.ok("/v1/events", **params)
        seen += page["data"]
        if page["done"]:
            assert page["iterator"] is None
            break
        assert len(page["data"]) == 3
        params["cursor"] = page["iterator"]
    assert len(seen) == 10
    assert len({e["event_id"] for e in seen}) == 10
    keys = [(e["received_at"], e["event_id"]) for e in seen]
    assert keys == sorted(keys, reverse=True)


async def test_last_page_exactly_full_is_done(api: Api, world: World) -> None:
    """When the rows end exactly at a page boundary, that page says done."""
    first = await api.ok("/v1/events", limit=5)
    assert not first["done"]
    second = await api.ok("/v1/events", limit=5, cursor=first["iterator"])
    assert len(second["data"]) == 5
    assert second["done"] is True
    assert second["iterator"] is None


async def test_empty_result_is_an_empty_last_page(api: Api, world: World) -> None:
    """No match: data is empty, done is true."""
    assert await api.ok("/v1/events", subject_id="nobody") == {
        "data": [],
        "iterator": None,
        "done": True,
    }


async def test_cursor_reuse_gives_the_same_page(api: Api, world: World) -> None:
    """A cursor can be used again and yields the same rows (it names a position)."""
    first = await api.ok("/v1/events", limit=4, type="crisis.*")
    again = [
        await api.ok("/v1/events", limit=4, type="crisis.*", cursor=first["iterator"])
    ]
    again.append(
        await api.ok("/v1/events", limit=4, type="crisis.*", cursor=first["iterator"])
    )
    assert again[0] == again[1]
    assert not {e["event_id"] for e in again[0]["data"]} & {
        e["event_id"] for e in first["data"]
    }


@pytest.mark.parametrize(
    ("params", "needle"),
    [
        ({"type": "crisis.detected"}, "other filters"),
        ({}, "other filters"),
        ({"type": "crisis.*", "severity": "info"}, "other filters"),
        ({"type": "crisis.*", "cursor_override": "garbage"}, "not valid"),
    ],
    ids=["changed-filter", "dropped-filter", "added-filter", "bad-cursor"],
)
async def test_cursor_with_other_filters_or_garbage_is_400(
    api: Api, world: World, params: dict[str, Any], needle: str
) -> None:
    """A cursor from another filter set, or not a cursor at all, is a 400 problem."""
    first = await api.ok("/v1/events", limit=2, type="crisis.*")
    cursor = params.pop("cursor_override", first["iterator"])
    response = await api.get("/v1/events", limit=2, cursor=cursor, **params)
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/problem+json"
    assert needle in response.json()["detail"]


async def test_cursor_of_another_list_is_400(api: Api, world: World) -> None:
    """A cursor from /v1/events does not work on /v1/deliveries."""
    first = await api.ok("/v1/events", limit=2)
    response = await api.get("/v1/deliveries", limit=2, cursor=first["iterator"])
    assert response.status_code == 400


async def test_event_detail_has_deliveries_timelines_and_audit(
    api: Api, world: World
) -> None:
    """What happened to event X: deliveries, each attempt in order, audit entries."""
    detail = await api.ok(f"/v1/events/{world.alert}")
    by_channel = {d["channel"]: d for d in detail["deliveries"]}
    assert set(by_channel) == {"email", "sms", "webhook"}
    email = by_channel["email"]
    assert email["status"] == "dead"
    assert [
        (a["attempt"], a["error_class"], a["provider"]) for a in email["timeline"]
    ] == [
        (1, "connection", "relay-1"),
        (2, "provider_permanent", "relay-2"),
    ]
    assert email["timeline"][0]["latency_ms"] == 12.5
    assert by_channel["sms"]["status"] == "delivered"
    assert by_channel["webhook"]["attempts"] == 2
    assert [a["kind"] for a in detail["audit"]] == ["event.received"]
    assert detail["delivery_count"] == 3


async def test_event_detail_audit_includes_entries_about_its_deliveries(
    api: Api, world: World, engine
) -> None:
    """Audit entries naming only a delivery of the event are in its detail, each once."""
    from sqlalchemy import text

    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO audit_log (at, kind, event_id, delivery_id) VALUES"
                " (now() + interval '1 s', 'delivery.discarded', NULL, :d),"
                " (now() + interval '2 s', 'delivery.replayed', :e, :d)"
            ),
            {"d": world.email, "e": world.alert},
        )
    detail = await api.ok(f"/v1/events/{world.alert}")
    assert [a["kind"] for a in detail["audit"]] == [
        "event.received",
        "delivery.discarded",
        "delivery.replayed",
    ]
