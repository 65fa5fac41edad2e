"""The dead-letter questions across pages: events with a dead delivery, dead deliveries."""

import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from dispatcher.settings import Settings
from tests.api import seed
from tests.api.conftest import RECIPIENT_KEY, Api, start_api

pytestmark = pytest.mark.postgres

#: Per event of a batch: how many of its two deliveries end dead.
DEAD_PER_EVENT = (0, 1, 2, 0, 0, 1, 0, 2, 1, 0, 0, 0)


@pytest.fixture
async def api(
    api_settings: Callable[..., Settings], tokens: dict[str, str]
) -> AsyncIterator[Api]:
    """The API without its per-token rate limit: a walk by pages of 2 is many requests."""
    limits = {"rate_per_second": 100_000, "burst": 100_000}
    server, client = await start_api(api_settings(limits=limits), tokens)
    yield client
    await client.client.aclose()
    await server.stop()


async def _world(engine: AsyncEngine) -> set[uuid.UUID]:
    """Three batches (each batch shares one received_at, so ids break the ties) of events
    with an email and an SMS delivery; some end dead. Returns the events with one."""
    with_dead: set[uuid.UUID] = set()
    for batch in range(3):
        docs = [
            seed.event(
                recipients=[
                    {"channel": "email", "to": f"p{batch}-{i}@example.org"},
                    {"channel": "sms", "to": f"+4477009{batch}{i:04d}"},
                ]
            )
            for i in range(len(DEAD_PER_EVENT))
        ]
        ids = await seed.events(engine, docs, key=RECIPIENT_KEY.encode())
        for event_id, dead in zip(ids, DEAD_PER_EVENT, strict=True):
            deliveries = sorted((await seed.delivery_ids(engine, event_id)).values())
            for n, delivery_id in enumerate(deliveries):
                status = "dead" if n < dead else "delivered"
                outcome = "failed" if n < dead else "delivered"
                await seed.attempt(engine, delivery_id, outcome=outcome, status=status)
            if dead:
                with_dead.add(event_id)
    return with_dead


async def _walk(api: Api, path: str, **params: Any) -> list[dict[str, Any]]:
    """Every item of a list, by pages of 2."""
    seen: list[dict[str, Any]] = []
    params["limit"] = 2
    while True:
        page = await api.ok(path, **params)
        seen += page["data"]
        if page["done"]:
            return seen
        params["cursor"] = page["iterator"]


async def test_events_with_a_dead_delivery_page_in_order(
    api: Api, engine: AsyncEngine
) -> None:
    """Events with a dead delivery, by pages of 2, are exactly those events, each once,
    in the order of the unfiltered list (newest first, ids breaking ties)."""
    with_dead = await _world(engine)
    everything = [uuid.UUID(e["event_id"]) for e in await _walk(api, "/v1/events")]
    found = [
        uuid.UUID(e["event_id"])
        for e in await _walk(api, "/v1/events", delivery_status="dead")
    ]
    assert found == [e for e in everything if e in with_dead]
    assert len(found) == 3 * sum(1 for d in DEAD_PER_EVENT if d)


async def test_dead_deliveries_page_in_order(api: Api, engine: AsyncEngine) -> None:
    """Dead deliveries, by pages of 2 and alone or by channel, are exactly the dead ones,
    each once, in the order of the unfiltered list."""
    await _world(engine)
    everything = await _walk(api, "/v1/deliveries")
    for channel in ([], ["sms"]):
        found = await _walk(api, "/v1/deliveries", status="dead", channel=channel)
        assert [d["delivery_id"] for d in found] == [
            d["delivery_id"]
            for d in everything
            if d["status"] == "dead" and (not channel or d["channel"] in channel)
        ]
    assert sum(d["status"] == "dead" for d in everything) == 3 * sum(DEAD_PER_EVENT)
