"""``/v1/replays``: plan, create, list, get and cancel replays over real PostgreSQL."""

import uuid
from datetime import datetime
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.api.conftest import Api
from tests.replay.test_replay_store import dead_letters

pytestmark = pytest.mark.postgres

REASON = "SMTP password renewed, INC-123"


async def post(api: Api, path: str, as_: str | None, body: Any = None) -> Any:
    return await api.client.post(path, json=body, headers=api.auth(as_))


async def audit(engine: AsyncEngine, kind: str) -> list[dict[str, Any]]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT detail FROM audit_log WHERE kind = :k ORDER BY id"),
            {"k": kind},
        )
        return [r.detail for r in rows]


async def test_plan_counts_the_filtered_set_with_a_masked_sample(
    api: Api, engine: AsyncEngine
) -> None:
    """The plan counts and groups what the filters select; the sample is masked for a
    reader, shown to a PII reader (and that disclosure audited); nothing changes."""
    ids = await dead_letters(engine, 3)
    await dead_letters(engine, 2, channel="webhook")
    plan = await api.ok("/v1/replays/plan", "reader", channel="email", max_age=3600)
    assert plan["count"] == plan["to_requeue"] == 3
    assert plan["by_channel"] == {"email": 3}
    assert plan["by_error_class"] == {"auth": 3}
    assert plan["by_endpoint"] == {"relay-1": 3}
    assert {s["delivery_id"] for s in plan["sample"]} == {str(i) for i in ids}
    assert all("@example.org" not in s["recipient"] for s in plan["sample"])
    assert await audit(engine, "api.pii_disclosed") == []

    shown = await api.ok("/v1/replays/plan", "pii", channel="email", sample=1)
    assert shown["count"] == 3
    [row] = shown["sample"]
    assert row["recipient"].endswith("@example.org")
    [disclosed] = await audit(engine, "api.pii_disclosed")
    assert disclosed["token"] == "pii"
    assert disclosed["ids"] == [row["delivery_id"]]

    everything = await api.ok("/v1/replays/plan", "reader", sample=0)
    assert everything["count"] == 5
    assert everything["sample"] == []
    assert await api.ok("/v1/replays", "reader") == {
        "data": [],
        "iterator": None,
        "done": True,
    }


async def test_create_freezes_the_set_and_records_the_token(
    api: Api, engine: AsyncEngine
) -> None:
    """POST freezes exactly the filtered dead letters into a planned replay, by the
    token's name, with the reason; the replay is listed and readable by id."""
    ids = await dead_letters(engine, 2)
    await dead_letters(engine, 1, channel="webhook")
    body = {"filters": {"channel": ["email"]}, "reason": REASON, "rate": 5}
    response = await post(api, "/v1/replays", "replayer", body)
    assert response.status_code == 201, response.text
    replay = response.json()
    assert response.headers["location"] == f"/v1/replays/{replay['replay_id']}"
    assert replay["status"] == "planned"
    assert replay["total"] == 2
    assert replay["created_by"] == "replayer"
    assert replay["reason"] == REASON
    assert replay["rate"] == 5
    assert replay["filters"]["channels"] == ["email"]
    async with engine.connect() as conn:
        frozen = await conn.execute(
            text("SELECT delivery_id FROM replay_items WHERE replay_id = :r"),
            {"r": replay["replay_id"]},
        )
        assert {r.delivery_id for r in frozen} == set(ids)
    [created] = await audit(engine, "replay.created")
    assert created["by"] == "replayer"
    assert created["reason"] == REASON
    assert created["total"] == 2

    got = await api.ok(f"/v1/replays/{replay['replay_id']}", "reader")
    assert got == replay
    listed = await api.ok("/v1/replays", "reader")
    assert [r["replay_id"] for r in listed["data"]] == [replay["replay_id"]]


async def test_create_refuses_an_empty_filter_unless_all(
    api: Api, engine: AsyncEngine
) -> None:
    """No filter is a 422 problem unless `all: true`; a reason is required."""
    await dead_letters(engine, 2)
    refused = await post(api, "/v1/replays", "replayer", {"reason": REASON})
    assert refused.status_code == 422, refused.text
    assert refused.headers["content-type"] == "application/problem+json"
    assert "all" in refused.json()["detail"]
    for body in (
        {"filters": {"channel": ["email"]}},
        {"filters": {"channel": ["email"]}, "reason": "   "},
    ):
        response = await post(api, "/v1/replays", "replayer", body)
        assert response.status_code == 422, response.text
    async with engine.connect() as conn:
        assert (await conn.execute(text("SELECT count(*) FROM replays"))).scalar() == 0

    everything = await post(
        api, "/v1/replays", "replayer", {"all": True, "reason": REASON}
    )
    assert everything.status_code == 201, everything.text
    assert everything.json()["total"] == 2


async def test_cancel_stops_a_replay_once(api: Api, engine: AsyncEngine) -> None:
    """Cancel answers the cancelled replay with what waited skipped; again is a 409,
    an unknown id a 404; the cancel is audited with the token's name."""
    await dead_letters(engine, 3)
    created = await post(
        api,
        "/v1/replays",
        "replayer",
        {"filters": {"channel": ["email"]}, "reason": REASON},
    )
    replay_id = created.json()["replay_id"]
    path = f"/v1/replays/{replay_id}/cancel"
    cancelled = await post(api, path, "replayer", {"reason": "wrong set"})
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["status"] == "cancelled"
    assert cancelled.json()["skipped"] == 3
    [entry] = await audit(engine, "replay.cancelled")
    assert entry["by"] == "replayer"
    assert entry["reason"] == "wrong set"

    again = await post(api, path, "replayer")
    assert again.status_code == 409, again.text
    assert again.headers["content-type"] == "application/problem+json"
    unknown = await post(api, f"/v1/replays/{uuid.uuid4()}/cancel", "replayer")
    assert unknown.status_code == 404, unknown.text
    missing = await api.get(f"/v1/replays/{uuid.uuid4()}", "reader")
    assert missing.status_code == 404


async def test_list_pages_newest_first(api: Api, engine: AsyncEngine) -> None:
    """Replays are listed newest first, a page at a time; unknown parameters are a 422."""
    await dead_letters(engine, 1)
    made = []
    for _ in range(3):
        response = await post(
            api, "/v1/replays", "replayer", {"all": True, "reason": REASON}
        )
        made.append(response.json()["replay_id"])
    first = await api.ok("/v1/replays", "reader", limit=2)
    assert [r["replay_id"] for r in first["data"]] == made[::-1][:2]
    assert not first["done"]
    rest = await api.ok("/v1/replays", "reader", limit=2, cursor=first["iterator"])
    assert [r["replay_id"] for r in rest["data"]] == made[:1]
    assert rest["done"]
    unknown = await api.get("/v1/replays", "reader", status="done")
    assert unknown.status_code == 422, unknown.text


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/replays", {"all": True, "reason": REASON}),
        (f"/v1/replays/{uuid.uuid4()}/cancel", {"reason": REASON}),
    ],
)
async def test_writes_need_the_dlq_write_scope(
    api: Api, path: str, body: dict[str, Any]
) -> None:
    """No token or an unknown one: 401; a read token (even PII): 403; `dlq:write`
    passes auth."""
    for name, status in (
        ("none", 401),
        ("unknown", 401),
        ("reader", 403),
        ("pii", 403),
    ):
        response = await post(api, path, None if name == "none" else name, body)
        assert response.status_code == status, (name, response.text)
        assert response.headers["content-type"] == "application/problem+json"
        assert response.headers["www-authenticate"].startswith("Bearer")
    response = await post(api, path, "replayer", body)
    assert response.status_code in {201, 404}, response.text


async def test_wrong_method_lists_every_method_of_the_path(api: Api) -> None:
    """`/v1/replays` is served by two routes (GET, POST): a 405 names both."""
    response = await api.client.delete("/v1/replays", headers=api.auth("reader"))
    assert response.status_code == 405
    assert response.headers["allow"] == "GET, POST"


async def test_create_with_the_plans_as_of_freezes_the_set_previewed(
    api: Api, engine: AsyncEngine
) -> None:
    """POST with the plan's `as_of` freezes what the plan counted, even when new dead
    letters arrived since."""
    planned = set(await dead_letters(engine, 3))
    plan = await api.ok("/v1/replays/plan", "reader", channel="email")
    assert plan["count"] == 3
    await dead_letters(engine, 2)  # dead after the plan: not in its set
    body = {
        "filters": {"channel": ["email"]},
        "reason": REASON,
        "as_of": plan["as_of"],
    }
    response = await post(api, "/v1/replays", "replayer", body)
    assert response.status_code == 201, response.text
    replay = response.json()
    assert replay["total"] == plan["count"]
    frozen_at = datetime.fromisoformat(replay["filters"]["as_of"])
    assert frozen_at == datetime.fromisoformat(plan["as_of"])
    async with engine.connect() as conn:
        frozen = await conn.execute(
            text("SELECT delivery_id FROM replay_items WHERE replay_id = :r"),
            {"r": replay["replay_id"]},
        )
        assert {r.delivery_id for r in frozen} == planned
