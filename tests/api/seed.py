"""Test data through the real ingest write (``persist_batch``), plus the attempt rows and
state changes that the delivery workers would write."""

import json
import uuid
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from dispatcher.events.parse import ParsedEvent, parse_event
from dispatcher.events.rejection import Rejection
from dispatcher.events.routing import Route
from dispatcher.ingest.incoming import Accepted, Incoming
from dispatcher.ingest.store import persist_batch
from dispatcher.testing import make_event

LIMIT = 262_144
ENDPOINTS = {"safety-monitor", "ops-hook"}


def incoming(body: bytes) -> Incoming:
    parsed = parse_event(body, max_bytes=LIMIT, endpoints=ENDPOINTS)
    outcome: Accepted | Rejection
    if isinstance(parsed, ParsedEvent):
        routes = [Route(r.channel, r.to, None) for r in parsed.event.recipients]
        outcome = Accepted(parsed, routes)
    else:
        outcome = parsed
    return Incoming(body=body, outcome=outcome, headers={"x-trace": "t"})


async def ingest(
    engine: AsyncEngine, bodies: list[bytes], *, key: bytes | None
) -> None:
    """Store messages (events or rejections) in one batch, as ingest does."""
    async with engine.connect() as conn:
        driver = (await conn.get_raw_connection()).driver_connection
        assert driver is not None
        async with driver.transaction():
            await persist_batch(
                driver,
                [incoming(b) for b in bodies],
                max_body_bytes=LIMIT,
                recipient_key=key,
            )


def event(**overrides: Any) -> dict[str, Any]:
    return make_event(**overrides)


async def events(
    engine: AsyncEngine, docs: list[dict[str, Any]], *, key: bytes | None
) -> list[uuid.UUID]:
    await ingest(engine, [json.dumps(d).encode() for d in docs], key=key)
    return [uuid.UUID(d["event_id"]) for d in docs]


async def delivery_ids(
    engine: AsyncEngine, event_id: uuid.UUID
) -> dict[str, uuid.UUID]:
    """The event's deliveries by recipient."""
    async with engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT recipient, id FROM deliveries WHERE event_id = :e"),
            {"e": event_id},
        )
        return {r.recipient: r.id for r in rows}


async def attempt(
    engine: AsyncEngine,
    delivery_id: uuid.UUID,
    *,
    outcome: str,
    provider: str = "relay-1",
    error_class: str | None = None,
    error_message: str | None = None,
    status: str | None = None,
) -> None:
    """One attempt row, and the delivery's new state, as the recorder writes them."""
    async with engine.begin() as conn:
        await conn.execute(
            text(
                """
                INSERT INTO delivery_attempts (delivery_id, attempt, provider, started_at,
                    finished_at, outcome, error_class, error_message, provider_code, latency_ms)
                SELECT :d, attempts + 1, :p, now(), now(), :o, :ec, :em, '550', 12.5
                FROM deliveries WHERE id = :d
                """
            ),
            {
                "d": delivery_id,
                "p": provider,
                "o": outcome,
                "ec": error_class,
                "em": error_message,
            },
        )
        await conn.execute(
            text(
                """
                UPDATE deliveries SET attempts = attempts + 1, last_provider = :p,
                    last_error_class = :ec, last_error_message = :em,
                    status = coalesce(:s, status), updated_at = now(),
                    delivered_at = CASE WHEN :s = 'delivered' THEN now() END,
                    dead_at = CASE WHEN :s = 'dead' THEN now() END
                WHERE id = :d
                """
            ),
            {
                "d": delivery_id,
                "p": provider,
                "ec": error_class,
                "em": error_message,
                "s": status,
            },
        )
