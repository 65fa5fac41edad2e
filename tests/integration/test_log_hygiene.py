"""No personal data in logs: ingest logs ids only, whatever the messages carry."""

import json
import logging
import random
import uuid

import pytest
import structlog
from sqlalchemy import text
from structlog.testing import capture_logs

from dispatcher.app import IngestService
from dispatcher.logs import configure_logging
from dispatcher.testing import event_bytes
from tests.integration.test_ingest_consumer import WEBHOOKS, publish, wait_count

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.rabbitmq,
    pytest.mark.usefixtures("cleanup_broker"),
]


async def test_canary_pii_never_reaches_the_logs(
    engine, database, make_settings, caplog
) -> None:
    """Valid, unrouted, duplicate, conflicting and malformed messages carrying canary PII
    are processed while every log record is captured: no canary appears in any of them."""
    email = f"canary-pii-{uuid.uuid4()}@example.org"
    phone = "+1555" + "".join(random.choice("0123456789") for _ in range(7))
    note = f"canary-pii-{uuid.uuid4()}"
    recipients = [{"channel": "email", "to": email}, {"channel": "sms", "to": phone}]
    valid = event_bytes(recipients=recipients, data={"note": note})
    event_id = json.loads(valid)["event_id"]
    messages = [
        valid,
        valid,  # duplicate
        event_bytes(
            event_id=event_id, data={"note": note + "-changed"}, recipients=recipients
        ),  # conflict
        event_bytes(data={"note": note}),  # unrouted
        f'{{"note": "{note}", "to": "{email}"'.encode(),  # not JSON
        event_bytes(recipients=[{"channel": "email", "to": f"not-an-address-{note}"}]),
        event_bytes(recipients=[{"channel": "sms", "to": f"{phone}-x"}]),
        event_bytes(type='crisis.detected\n{"level":"critical"}', data={"note": note}),
    ]
    settings = make_settings(database, channels=WEBHOOKS)
    # The product's logging at its most verbose. aiormq logs whole frames (bodies) at DEBUG,
    # so configure_logging must keep libraries at WARNING even then.
    configure_logging("debug")
    root = logging.getLogger()
    assert root.level >= logging.WARNING
    root.addHandler(caplog.handler)
    structlog.configure(cache_logger_on_first_use=False)
    with capture_logs() as logs:
        service = IngestService(settings, engine)
        await service.start()
        try:
            await publish(settings, [(m, "crisis.detected") for m in messages])
            await wait_count(
                engine,
                "SELECT (SELECT count(*) FROM events) + (SELECT count(*) FROM rejected_messages)",
                6,
            )
            await wait_count(
                engine,
                "SELECT count(*) FROM audit_log WHERE kind IN ('event.duplicate', 'event.conflict')",
                2,
            )
        finally:
            await service.stop()
            root.removeHandler(caplog.handler)
    text = repr(logs) + "\n".join(
        r.getMessage() + repr(r.__dict__) for r in caplog.records
    )
    assert any(
        entry.get("event") == "dispatcher.ingest.event_unrouted" for entry in logs
    ), "logging must be captured"
    for canary in (email, phone, note):
        assert canary not in text


async def test_unknown_key_names_are_stored_nowhere_but_the_body(
    engine, database, make_settings, caplog
) -> None:
    """Unknown keys whose names carry canary PII are rejected as unknown_field: the names
    appear in no stored reason or message, no audit detail and no log record."""
    top = f"canary-pii-{uuid.uuid4()}@example.org"
    nested = f"canary-pii-{uuid.uuid4()}"
    messages = [
        event_bytes(**{top: 1}),
        event_bytes(recipients=[{"channel": "sms", "to": "+15551230000", nested: 1}]),
    ]
    settings = make_settings(database, channels=WEBHOOKS)
    configure_logging("debug")
    root = logging.getLogger()
    root.addHandler(caplog.handler)
    structlog.configure(cache_logger_on_first_use=False)
    with capture_logs() as logs:
        service = IngestService(settings, engine)
        await service.start()
        try:
            await publish(settings, [(m, "crisis.detected") for m in messages])
            await wait_count(engine, "SELECT count(*) FROM rejected_messages", 2)
            await wait_count(
                engine,
                "SELECT count(*) FROM audit_log WHERE kind = 'message.rejected'",
                2,
            )
        finally:
            await service.stop()
            root.removeHandler(caplog.handler)
    async with engine.connect() as conn:
        rows = (
            await conn.execute(text("SELECT reason, message FROM rejected_messages"))
        ).all()
        audit = (await conn.execute(text("SELECT detail::text FROM audit_log"))).all()
    assert sorted(r.reason for r in rows) == ["unknown_field", "unknown_field"]
    stored = repr(rows) + repr(audit)
    text_logs = repr(logs) + "\n".join(
        r.getMessage() + repr(r.__dict__) for r in caplog.records
    )
    for canary in (top, nested):
        assert canary not in stored
        assert canary not in text_logs
