"""``dispatcher demo``: the service in-process, sample crisis events, and where to look."""

import asyncio
import json
import time
import uuid
from typing import Any

from rich.console import Console
from rich.table import Table
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from dispatcher.app import IngestService, build_engine
from dispatcher.publisher import Publisher
from dispatcher.settings import Settings
from dispatcher.testing import make_event

DEMO_RULES: list[dict[str, Any]] = [
    {
        "name": "crisis-critical",
        "types": ["crisis.*"],
        "min_severity": "high",
        "recipients": [
            {"channel": "email", "to": "crisis-team@example.org"},
            {"channel": "sms", "to": "+15550100001"},
            {"channel": "webhook", "to": "safety-monitor"},
        ],
    }
]
DEMO_WEBHOOKS = {
    "webhook": {
        "endpoints": {"safety-monitor": {"url": "https://safety-monitor.invalid/hooks"}}
    }
}


def demo_settings(settings: Settings) -> Settings:
    """The user's settings plus the demo's routing rule and webhook endpoint, when unset."""
    updates: dict[str, Any] = {}
    if not settings.routing:
        updates["routing"] = DEMO_RULES
    if not settings.channels.webhook.endpoints:
        updates["channels"] = {**settings.channels.model_dump(), **DEMO_WEBHOOKS}
    return (
        Settings.model_validate({**settings.model_dump(mode="python"), **updates})
        if updates
        else settings
    )


def sample_messages(count: int) -> list[tuple[bytes, str]]:
    """Crisis events of every severity, one republished, one malformed."""
    severities = ["critical", "high", "medium", "low", "info"]
    events = [
        make_event(
            severity=severities[n % len(severities)],
            data={
                "score": round(0.99 - n / 100, 2),
                "signal": "self-harm-language",
                "demo_run": str(uuid.uuid4())[:8],
            },
        )
        for n in range(count)
    ]
    messages = [(json.dumps(e).encode(), e["type"]) for e in events]
    messages.append(
        (json.dumps(events[0]).encode(), events[0]["type"])
    )  # a duplicate publish
    messages.append(
        (
            b'{"schema_version": 1, "type": "crisis.detected", "severity": "urgent"}',
            "crisis.detected",
        )
    )
    return messages


async def run_demo(settings: Settings, *, events: int = 6) -> None:
    console = Console()
    settings = demo_settings(settings)
    engine = build_engine(settings, "dispatcher-demo")
    service = IngestService(settings, engine)
    await service.start()
    try:
        since = await _now(engine)
        messages = sample_messages(events)
        async with Publisher(
            settings.amqp_url.get_secret_value(), settings.exchange
        ) as publisher:
            await publisher.publish_many((body, key, None) for body, key in messages)
        console.print(
            f"published {len(messages)} messages to exchange [bold]{settings.exchange}[/]"
        )
        await _wait_stored(engine, since, events + 1)
        await _show(console, engine, since)
    finally:
        await service.stop()
        await engine.dispose()


async def _now(engine: AsyncEngine) -> Any:
    async with engine.connect() as conn:
        return (await conn.execute(text("SELECT clock_timestamp()"))).scalar_one()


async def _wait_stored(
    engine: AsyncEngine, since: Any, expected: int, within: float = 30.0
) -> None:
    deadline = time.monotonic() + within
    sql = text(
        "SELECT (SELECT count(*) FROM events WHERE received_at >= :t)"
        " + (SELECT count(*) FROM rejected_messages WHERE received_at >= :t)"
    )
    while time.monotonic() < deadline:
        async with engine.connect() as conn:
            if (await conn.execute(sql, {"t": since})).scalar_one() >= expected:
                return
        await asyncio.sleep(0.1)


async def _show(console: Console, engine: AsyncEngine, since: Any) -> None:
    async with engine.connect() as conn:
        events = (
            await conn.execute(
                text(
                    "SELECT e.id, e.type, e.severity, e.delivery_count, count(d.id) FILTER (WHERE d.status = 'pending') AS pending"
                    " FROM events e LEFT JOIN deliveries d ON d.event_id = e.id WHERE e.received_at >= :t"
                    " GROUP BY e.id ORDER BY e.received_at, e.id"
                ),
                {"t": since},
            )
        ).all()
        audit = (
            await conn.execute(
                text(
                    "SELECT kind, count(*) FROM audit_log WHERE at >= :t GROUP BY kind ORDER BY kind"
                ),
                {"t": since},
            )
        ).all()
        rejected = (
            await conn.execute(
                text(
                    "SELECT id, reason, message FROM rejected_messages WHERE received_at >= :t ORDER BY id"
                ),
                {"t": since},
            )
        ).all()
    table = Table(title="events stored (table events, outbox table deliveries)")
    for column in ("event_id", "type", "severity", "deliveries", "pending"):
        table.add_column(column)
    for row in events:
        table.add_row(
            str(row.id),
            row.type,
            row.severity,
            str(row.delivery_count),
            str(row.pending),
        )
    console.print(table)
    console.print("audit_log: " + ", ".join(f"{kind} x{n}" for kind, n in audit))
    for row in rejected:
        console.print(
            f"rejected_messages #{row.id}: [bold]{row.reason}[/] ({row.message})"
        )
    console.print(
        "\nwhere to look:\n"
        "  psql \"$DISPATCHER_DATABASE_URL\" (drop '+asyncpg') then:\n"
        "    SELECT id, type, severity, received_at FROM events ORDER BY received_at DESC LIMIT 10;\n"
        "    SELECT channel, status, attempts, next_attempt_at FROM deliveries ORDER BY created_at DESC LIMIT 10;\n"
        "    SELECT kind, event_id, detail FROM audit_log ORDER BY id DESC LIMIT 10;\n"
        "    SELECT reason, message FROM rejected_messages ORDER BY id DESC LIMIT 10;"
    )
