"""GET /v1/deliveries, its count and detail, attempts, rejected messages, the audit log and
the channel snapshot, against a known world."""

import asyncio
import time
from typing import Any

import pytest

from tests.api.conftest import Api, start_api
from tests.api.world import JANE, PHONE, World, build

pytestmark = pytest.mark.postgres


@pytest.fixture
async def world(engine) -> World:
    return await build(engine)


async def ids(api: Api, **params: Any) -> set[str]:
    page = await api.ok("/v1/deliveries", limit=250, **params)
    count = await api.ok("/v1/deliveries/count", **params)
    assert count == {"count": len(page["data"]), "approximated": False}
    return {d["delivery_id"] for d in page["data"]}


def s(*values: Any) -> set[str]:
    return {str(v) for v in values}


async def test_each_filter(api: Api, world: World) -> None:
    """Each filter alone selects exactly the deliveries it names; the count agrees."""
    w = world
    every = s(w.email, w.sms, w.hook, w.other_email)
    assert await ids(api) == every
    assert await ids(api, channel="email") == s(w.email, w.other_email)
    assert await ids(api, channel=["sms", "webhook"]) == s(w.sms, w.hook)
    assert await ids(api, status="dead") == s(w.email)
    assert await ids(api, status=["pending", "delivered"]) == s(
        w.sms, w.hook, w.other_email
    )
    assert await ids(api, severity="high") == s(w.other_email)
    assert await ids(api, endpoint="ops-hook") == s(w.hook)
    assert await ids(api, provider="relay-2") == s(w.email)
    assert await ids(api, error_class="timeout") == s(w.hook)
    assert await ids(api, error_class=["timeout", "provider_permanent"]) == s(
        w.hook, w.email
    )
    assert await ids(api, min_attempts=2) == s(w.email, w.hook)
    assert await ids(api, event_id=str(w.escalation)) == s(w.other_email)
    assert await ids(api, created_after="2000-01-01T00:00:00Z") == every
    assert await ids(api, created_before="2000-01-01T00:00:00Z") == set()


@pytest.mark.parametrize(
    "spelling", [JANE, JANE.lower(), JANE.upper(), f"  {JANE} "], ids=str
)
async def test_recipient_search_by_keyed_hash(
    api: Api, world: World, spelling: str
) -> None:
    """An address finds its deliveries through the keyed hash, whatever its case."""
    assert await ids(api, recipient=spelling) == s(world.email)


async def test_recipient_search_by_phone_and_unknown(api: Api, world: World) -> None:
    """A number finds its delivery; an unknown address finds nothing."""
    assert await ids(api, recipient=PHONE) == s(world.sms)
    assert await ids(api, recipient="nobody@example.org") == set()
    assert await ids(api, recipient=PHONE, status="dead") == set()


async def test_bad_recipient_is_422(api: Api, world: World) -> None:
    """Neither an address nor a number: a 422 problem."""
    for value in ("ops-hook", "not@@valid", "+0123"):
        response = await api.get("/v1/deliveries", recipient=value)
        assert response.status_code == 422, value
        assert value not in response.text


async def test_recipient_search_without_key_is_a_clear_problem(
    api_settings, tokens, world: World
) -> None:
    """Without api.recipient_hash_key, recipient search answers a 400 saying so."""
    server, client = await start_api(api_settings(recipient_hash_key=None), tokens)
    try:
        response = await client.get("/v1/deliveries", recipient=JANE)
        assert response.status_code == 400
        assert "recipient_hash_key" in response.json()["detail"]
        assert JANE not in response.text
    finally:
        await client.client.aclose()
        await server.stop()


async def test_deliveries_paginate(api: Api, world: World) -> None:
    """Pages of one walk all four deliveries once."""
    seen, cursor = [], None
    while True:
        params: dict[str, Any] = {"limit": 1} | ({"cursor": cursor} if cursor else {})
        page = await api.ok("/v1/deliveries", **params)
        seen += [d["delivery_id"] for d in page["data"]]
        if page["done"]:
            break
        cursor = page["iterator"]
    assert sorted(seen) == sorted(
        s(world.email, world.sms, world.hook, world.other_email)
    )


async def test_count_above_the_exact_limit_is_an_estimate(
    api_settings, tokens, world: World, engine
) -> None:
    """Past api.limits.exact_count_limit the count is the planner's, and says so."""
    from sqlalchemy import text

    async with engine.begin() as conn:
        await conn.execute(text("ANALYZE deliveries"))
    server, client = await start_api(
        api_settings(limits={"exact_count_limit": 2}), tokens
    )
    try:
        count = await client.ok("/v1/deliveries/count")
        assert count["approximated"] is True
        assert count["count"] >= 3
        exact = await client.ok("/v1/deliveries/count", status="dead")
        assert exact == {"count": 1, "approximated": False}
    finally:
        await client.client.aclose()
        await server.stop()


async def test_count_estimate_with_a_list_filter(
    api_settings, tokens, world: World, engine
) -> None:
    """An estimated count with a list filter (channel) is answered, not a 503."""
    from sqlalchemy import text

    async with engine.begin() as conn:
        await conn.execute(text("ANALYZE deliveries"))
    server, client = await start_api(
        api_settings(limits={"exact_count_limit": 1}), tokens
    )
    try:
        count = await client.ok("/v1/deliveries/count", channel=["email", "sms"])
        assert count["approximated"] is True
        assert count["count"] >= 2
    finally:
        await client.client.aclose()
        await server.stop()


async def test_delivery_detail_and_attempts(api: Api, world: World) -> None:
    """A delivery with its timeline; its attempts paginate oldest first."""
    detail = await api.ok(f"/v1/deliveries/{world.email}")
    assert detail["status"] == "dead"
    assert [a["attempt"] for a in detail["timeline"]] == [1, 2]
    first = await api.ok(f"/v1/deliveries/{world.email}/attempts", limit=1)
    assert [a["attempt"] for a in first["data"]] == [1]
    second = await api.ok(
        f"/v1/deliveries/{world.email}/attempts", limit=1, cursor=first["iterator"]
    )
    assert [a["attempt"] for a in second["data"]] == [2]
    assert second["done"] is True
    other = await api.get(
        f"/v1/deliveries/{world.hook}/attempts", limit=1, cursor=first["iterator"]
    )
    assert other.status_code == 400
    missing = "00000000-0000-0000-0000-000000000000"
    assert (await api.get(f"/v1/deliveries/{missing}")).status_code == 404
    assert (await api.get(f"/v1/deliveries/{missing}/attempts")).status_code == 404


async def test_rejected_list_and_detail(api: Api, world: World) -> None:
    """Rejected messages list reason and size; filters by reason and time."""
    page = await api.ok("/v1/rejected")
    assert len(page["data"]) == 1
    item = page["data"][0]
    assert item["reason"] == "missing_schema_version"
    assert item["body_size"] > 0
    assert (await api.ok("/v1/rejected", reason="not_json"))["data"] == []
    assert (await api.ok("/v1/rejected", received_before="2000-01-01T00:00:00Z"))[
        "data"
    ] == []
    detail = await api.ok(f"/v1/rejected/{item['id']}")
    assert detail["reason"] == item["reason"]
    assert (await api.get("/v1/rejected/999999")).status_code == 404


async def test_audit_log_filters(api: Api, world: World) -> None:
    """The audit log lists by kind, event and time."""
    everything = (await api.ok("/v1/audit", limit=250))["data"]
    kinds = {a["kind"] for a in everything}
    assert {"event.received", "event.unrouted", "message.rejected"} <= kinds
    received = (await api.ok("/v1/audit", kind="event.received"))["data"]
    assert {a["event_id"] for a in received} == s(world.alert, world.escalation)
    mine = (await api.ok("/v1/audit", event_id=str(world.checkin)))["data"]
    assert [a["kind"] for a in mine] == ["event.unrouted"]
    assert (await api.ok("/v1/audit", before="2000-01-01T00:00:00Z"))["data"] == []
    assert len(
        (await api.ok("/v1/audit", after="2000-01-01T00:00:00Z"))["data"]
    ) == len(everything)
    first = await api.ok("/v1/audit", limit=2)
    rest = await api.ok("/v1/audit", limit=250, cursor=first["iterator"])
    assert len(first["data"]) + len(rest["data"]) == len(everything)


async def test_channels_snapshot_shows_backlog_failures_and_dead_letters(
    api_settings, tokens, world: World
) -> None:
    """Which endpoint is failing now: per channel and provider, from the background
    snapshot (refreshed every api.limits.snapshot_interval)."""
    server, client = await start_api(
        api_settings(limits={"snapshot_interval": 0.05}), tokens
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            snapshot = await client.ok("/v1/channels")
            if len(snapshot["channels"]) == 3 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        channels = {c["channel"]: c for c in snapshot["channels"]}
        assert channels["email"]["dead_letters"] == 1
        assert channels["email"]["due"] == 1  # the escalation's email
        hook = {p["name"]: p for p in channels["webhook"]["providers"]}["ops-hook"]
        assert hook["attempts_recent"] == 2
        assert hook["success_rate"] == 0.0
        assert hook["last_error_class"] == "timeout"
        assert hook["due"] == 1
        sms = {p["name"]: p for p in channels["sms"]["providers"]}["twilio-main"]
        assert sms["success_rate"] == 1.0
    finally:
        await client.client.aclose()
        await server.stop()
