"""``dispatcher demo``: the whole service in-process against local sinks, and where to look.

Three real local servers stand in for the providers: an SMTP server, a Twilio-compatible
API (driven through the real twilio client) and a webhook receiver. One webhook endpoint of
the demo answers 404, so one delivery is dead-lettered and shows how that looks.
"""

import asyncio
import base64
import json
import os
import time
import uuid
from contextlib import AsyncExitStack
from http import HTTPStatus
from typing import Any

from rich.console import Console
from rich.table import Table
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from dispatcher.app import IngestService, build_delivery, build_engine
from dispatcher.publisher import Publisher
from dispatcher.settings import Settings
from dispatcher.sinks.smtp import SmtpSink
from dispatcher.sinks.twilio import TwilioSink
from dispatcher.sinks.webhook import WebhookSink
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
#: The demo's Twilio stub account: it exists only inside this process.
DEMO_SID = "AC" + "d" * 32
FINAL = ("delivered", "dead")


def demo_channels(
    smtp: SmtpSink, twilio: TwilioSink, webhook: WebhookSink, token: str
) -> dict[str, Any]:
    """Channel configuration pointing at the local sinks."""
    secret = "whsec_" + base64.b64encode(os.urandom(24)).decode()
    return {
        "email": {
            "enabled": True,
            "providers": [
                {
                    "name": "local-smtp",
                    "host": "127.0.0.1",
                    "port": smtp.port,
                    "tls": "none",
                    "from_address": "dispatcher@example.org",
                }
            ],
        },
        "sms": {
            "enabled": True,
            "providers": [
                {
                    "name": "local-twilio",
                    "account_sid": DEMO_SID,
                    "auth_token": token,
                    "from_number": "+15550009999",
                    "base_url": twilio.base_url,
                }
            ],
        },
        "webhook": {
            "allow_http": True,
            "allow_private_networks": ["127.0.0.0/8"],
            "endpoints": {
                "safety-monitor": {
                    "url": webhook.url("/safety-monitor"),
                    "secrets": [secret],
                },
                "legacy-case-system": {
                    "url": webhook.url("/legacy-case-system"),
                    "secrets": [secret],
                },
            },
        },
    }


def demo_settings(settings: Settings, channels: dict[str, Any]) -> Settings:
    """The user's settings with the demo's routing rule and the local sinks as providers."""
    updates: dict[str, Any] = {"channels": channels}
    if not settings.routing:
        updates["routing"] = DEMO_RULES
    return Settings.model_validate({**settings.model_dump(mode="python"), **updates})


def sample_messages(count: int) -> list[tuple[bytes, str]]:
    """Crisis events of every severity, one republished, one for a retired endpoint, one malformed."""
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
    retired = make_event(
        type="case.updated",
        severity="medium",
        recipients=[{"channel": "webhook", "to": "legacy-case-system"}],
    )
    messages = [(json.dumps(e).encode(), e["type"]) for e in [*events, retired]]
    messages.append((json.dumps(events[0]).encode(), events[0]["type"]))  # a duplicate
    messages.append(
        (
            b'{"schema_version": 1, "type": "crisis.detected", "severity": "urgent"}',
            "crisis.detected",
        )
    )
    return messages


async def run_demo(settings: Settings, *, events: int = 6) -> None:
    console = Console(width=max(Console().width, 130))
    token = base64.b16encode(os.urandom(16)).decode()
    async with AsyncExitStack() as stack:
        smtp = await stack.enter_async_context(SmtpSink())
        twilio = await stack.enter_async_context(TwilioSink(DEMO_SID, token))
        webhook = await stack.enter_async_context(WebhookSink())
        webhook.respond("/legacy-case-system", 404)  # retired: a permanent refusal
        settings = demo_settings(settings, demo_channels(smtp, twilio, webhook, token))
        engine = build_engine(settings, "dispatcher-demo")
        stack.push_async_callback(engine.dispose)
        delivery = build_delivery(settings, engine)
        ingest = IngestService(settings, engine, handoff=delivery.fast_path)
        await ingest.start()
        stack.push_async_callback(ingest.stop)
        await delivery.start()
        stack.push_async_callback(delivery.stop)

        since = await _now(engine)
        messages = sample_messages(events)
        async with Publisher(
            settings.amqp_url.get_secret_value(), settings.exchange
        ) as pub:
            await pub.publish_many((body, key, None) for body, key in messages)
        console.print(
            f"published {len(messages)} messages to exchange [bold]{settings.exchange}[/]"
        )
        await _wait_final(engine, since)
        await _show(console, engine, since)
        console.print(
            f"\nlocal sinks received: {len(smtp.received)} emails, "
            f"{len(twilio.received)} SMS, "
            f"{sum(1 for r in webhook.received if r.status == HTTPStatus.OK)} webhooks "
            f"({sum(1 for r in webhook.received if r.status == HTTPStatus.NOT_FOUND)} refused with 404)"
        )
        for mail in smtp.received[:3]:
            console.print(f"  email Message-ID {mail.message_id}")
        for sms in twilio.received[:3]:
            console.print(f"  SMS {sms.sid}")
        for request in webhook.received[:3]:
            console.print(
                f"  webhook {request.path} webhook-id {request.webhook_id} -> {request.status}"
            )
        _where_to_look(console)


async def _now(engine: AsyncEngine) -> Any:
    async with engine.connect() as conn:
        return (await conn.execute(text("SELECT clock_timestamp()"))).scalar_one()


async def _wait_final(engine: AsyncEngine, since: Any, within: float = 30.0) -> None:
    """Until every delivery of the demo's events is delivered or dead (or time is up)."""
    deadline = time.monotonic() + within
    sql = text(
        "SELECT count(*) FILTER (WHERE d.status NOT IN ('delivered', 'dead')), count(*)"
        " FROM deliveries d JOIN events e ON e.id = d.event_id WHERE e.received_at >= :t"
    )
    while time.monotonic() < deadline:
        async with engine.connect() as conn:
            open_, total = (await conn.execute(sql, {"t": since})).one()
        if total and not open_:
            return
        await asyncio.sleep(0.1)


async def _show(console: Console, engine: AsyncEngine, since: Any) -> None:
    async with engine.connect() as conn:
        deliveries = (
            await conn.execute(
                text(
                    "SELECT e.id AS event_id, e.type, e.severity, d.channel, d.status,"
                    " d.attempts, d.last_error_class"
                    " FROM events e LEFT JOIN deliveries d ON d.event_id = e.id"
                    " WHERE e.received_at >= :t ORDER BY e.received_at, e.id, d.channel"
                ),
                {"t": since},
            )
        ).all()
        audit = (
            await conn.execute(
                text(
                    "SELECT kind, count(*) FROM audit_log WHERE at >= :t"
                    " GROUP BY kind ORDER BY kind"
                ),
                {"t": since},
            )
        ).all()
        rejected = (
            await conn.execute(
                text(
                    "SELECT id, reason, message FROM rejected_messages"
                    " WHERE received_at >= :t ORDER BY id"
                ),
                {"t": since},
            )
        ).all()
    table = Table(title="events and their deliveries (tables events, deliveries)")
    for column in (
        "event_id",
        "type",
        "severity",
        "channel",
        "status",
        "attempts",
        "error",
    ):
        table.add_column(column)
    for row in deliveries:
        style = "red" if row.status == "dead" else None
        table.add_row(
            str(row.event_id)[:8],
            row.type,
            row.severity,
            row.channel or "(no recipient)",
            row.status or "",
            str(row.attempts or ""),
            row.last_error_class or "",
            style=style,
        )
    console.print(table)
    console.print("audit_log: " + ", ".join(f"{kind} x{n}" for kind, n in audit))
    for row in rejected:
        console.print(
            f"rejected_messages #{row.id}: [bold]{row.reason}[/] ({row.message})"
        )


def _where_to_look(console: Console) -> None:
    console.print(
        "\nwhere to look:\n"
        "  dispatcher status                      deliveries per channel and status, breakers\n"
        "  dispatcher dlq list --summary          the dead letters, grouped by channel and error\n"
        "  dispatcher dlq replay --channel webhook --dry-run   what a replay would send\n"
        "  dispatcher token create me --scope audit:read, then dispatcher api and\n"
        "    curl -H 'Authorization: Bearer <token>' localhost:8080/v1/events  (docs/api.md)\n"
        "  psql \"$DISPATCHER_DATABASE_URL\" (drop '+asyncpg') then:\n"
        "    SELECT channel, status, attempts, last_error_class FROM deliveries"
        " ORDER BY created_at DESC LIMIT 10;\n"
        "    SELECT delivery_id, attempt, provider, outcome, error_class, provider_code,"
        " latency_ms FROM delivery_attempts ORDER BY id DESC LIMIT 10;\n"
        "    SELECT channel, last_error_class, dead_at FROM deliveries WHERE status = 'dead';"
        "   -- the dead-letter queue\n"
        "    SELECT kind, event_id, delivery_id, detail FROM audit_log ORDER BY id DESC LIMIT 10;\n"
        "  RabbitMQ queue <prefix>.dlq.webhook holds the dead letter's ids for broker tooling."
    )
