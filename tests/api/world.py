"""A small, known world of events, deliveries, attempts and rejections for API tests."""

import uuid
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine

from tests.api import seed
from tests.api.conftest import RECIPIENT_KEY

JANE = "Jane.Doe@example.org"
PHONE = "+447700900123"
LEAK = "leak@example.org"


@dataclass
class World:
    alert: uuid.UUID  # crisis.detected critical, person-alpha, 3 deliveries
    escalation: uuid.UUID  # crisis.escalated high, person-alpha, 1 email
    checkin: (
        uuid.UUID
    )  # wellbeing.checkin low, person-beta, unrouted, occurred 2026-01-01
    bulk: list[uuid.UUID]  # 7 crisis.detected info, person-gamma, unrouted
    email: uuid.UUID  # alert's email: failed then dead
    sms: uuid.UUID  # alert's sms: delivered
    hook: uuid.UUID  # alert's webhook: two timeouts, still pending
    other_email: uuid.UUID  # escalation's email: pending


async def build(engine: AsyncEngine) -> World:
    key = RECIPIENT_KEY.encode()
    alert, escalation, checkin = await seed.events(
        engine,
        [
            seed.event(
                type="crisis.detected",
                severity="critical",
                subject={"id": "person-alpha", "name": "Alpha Person"},
                correlation_id="corr-1",
                data={"score": 0.97, "note": "said something worrying"},
                recipients=[
                    {"channel": "email", "to": JANE},
                    {"channel": "sms", "to": PHONE},
                    {"channel": "webhook", "to": "ops-hook"},
                ],
            ),
            seed.event(
                type="crisis.escalated",
                severity="high",
                subject={"id": "person-alpha"},
                recipients=[{"channel": "email", "to": "other@example.org"}],
            ),
            seed.event(
                type="wellbeing.checkin",
                severity="low",
                subject={"id": "person-beta"},
                occurred_at="2026-01-01T00:00:00+00:00",
            ),
        ],
        key=key,
    )
    bulk = await seed.events(
        engine,
        [
            seed.event(
                type="crisis.detected", severity="info", subject={"id": "person-gamma"}
            )
            for _ in range(7)
        ],
        key=key,
    )
    await seed.ingest(
        engine, [b'{"not": "an event", "email": "' + LEAK.encode() + b'"}'], key=key
    )
    ids = await seed.delivery_ids(engine, alert)
    email, sms, hook = ids[JANE], ids[PHONE], ids["ops-hook"]
    await seed.attempt(
        engine, email, outcome="failed", error_class="connection", provider="relay-1"
    )
    await seed.attempt(
        engine,
        email,
        outcome="failed",
        error_class="provider_permanent",
        error_message=f"550 mailbox {JANE} unknown",
        provider="relay-2",
        status="dead",
    )
    await seed.attempt(
        engine, sms, outcome="delivered", provider="twilio-main", status="delivered"
    )
    for _ in range(2):
        await seed.attempt(
            engine, hook, outcome="failed", error_class="timeout", provider="ops-hook"
        )
    other = (await seed.delivery_ids(engine, escalation))["other@example.org"]
    return World(alert, escalation, checkin, bulk, email, sms, hook, other)
