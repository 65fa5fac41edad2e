"""PII is masked without audit:read-pii, and every unmasked response is audited first."""

import base64
from typing import Any

import pytest
from sqlalchemy import text

from tests.api.conftest import Api, start_api
from tests.api.world import JANE, LEAK, PHONE, World, build

pytestmark = pytest.mark.postgres


@pytest.fixture
async def world(engine) -> World:
    return await build(engine)


async def disclosures(engine) -> list[dict[str, Any]]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT event_id, delivery_id, detail, at FROM audit_log "
                "WHERE kind = 'api.pii_disclosed' ORDER BY id"
            )
        )
        return [dict(r._mapping) for r in rows]


async def test_reader_sees_masks_and_leaves_no_disclosure(
    api: Api, world: World, engine
) -> None:
    """Without the PII scope: masked recipients, subject, data and provider messages."""
    detail = await api.ok(f"/v1/events/{world.alert}", as_="reader")
    text_ = str(detail)
    for secret in (
        JANE,
        PHONE,
        "person-alpha",
        "Alpha Person",
        "said something worrying",
    ):
        assert secret not in text_
    assert detail["subject_id"] == "p***a"
    assert detail["subject"] == {"id": "p***a", "name": "***"}
    assert detail["data"] == {"score": "***", "note": "***"}
    recipients = {d["channel"]: d["recipient"] for d in detail["deliveries"]}
    assert recipients == {
        "email": "J***@e***.org",
        "sms": "+44*******123",
        "webhook": "ops-hook",
    }
    email = next(d for d in detail["deliveries"] if d["channel"] == "email")
    assert email["last_error_message"] is None
    assert all(a["error_message"] is None for a in email["timeline"])
    listing = await api.ok("/v1/deliveries", recipient=JANE)
    assert listing["data"][0]["recipient"] == "J***@e***.org"
    events = await api.ok("/v1/events", subject_id="person-alpha")
    assert {e["subject_id"] for e in events["data"]} == {"p***a"}
    rejected = (await api.ok("/v1/rejected"))["data"][0]
    one = await api.ok(f"/v1/rejected/{rejected['id']}")
    assert one["body_base64"] is None
    assert one["headers"] is None
    assert LEAK not in str(one)
    assert await disclosures(engine) == []


async def test_pii_token_sees_clear_values_and_each_response_is_audited(
    api: Api, world: World, engine
) -> None:
    """With audit:read-pii: clear values, and an audit entry naming the token, the route
    and the ids for each response that showed them."""
    detail = await api.ok(f"/v1/events/{world.alert}", as_="pii")
    assert detail["subject"] == {"id": "person-alpha", "name": "Alpha Person"}
    assert detail["data"]["note"] == "said something worrying"
    email = next(d for d in detail["deliveries"] if d["channel"] == "email")
    assert email["recipient"] == JANE
    assert email["last_error_message"] == f"550 mailbox {JANE} unknown"

    listing = await api.ok("/v1/deliveries", as_="pii", channel="sms")
    assert [d["recipient"] for d in listing["data"]] == [PHONE]
    one = await api.ok(f"/v1/deliveries/{world.sms}", as_="pii")
    assert one["recipient"] == PHONE
    rejected = (await api.ok("/v1/rejected", as_="pii"))["data"][0]
    raw = await api.ok(f"/v1/rejected/{rejected['id']}", as_="pii")
    assert LEAK.encode() in base64.b64decode(raw["body_base64"])

    entries = await disclosures(engine)
    routes = [(e["detail"]["token"], e["detail"]["route"]) for e in entries]
    assert routes == [
        ("pii", "/v1/events/{event_id}"),
        ("pii", "/v1/deliveries"),
        ("pii", "/v1/deliveries/{delivery_id}"),
        ("pii", "/v1/rejected/{rejected_id}"),
    ]
    assert entries[0]["event_id"] == world.alert
    assert entries[1]["detail"]["ids"] == [str(world.sms)]
    assert entries[2]["delivery_id"] == world.sms
    assert entries[3]["detail"]["ids"] == [str(rejected["id"])]
    # The entries themselves carry no PII.
    assert all(JANE not in str(e) and PHONE not in str(e) for e in entries)


async def test_empty_pii_page_is_not_a_disclosure(
    api: Api, world: World, engine
) -> None:
    """A PII-scoped request that returned no rows discloses nothing and records nothing."""
    await api.ok("/v1/deliveries", as_="pii", recipient="nobody@example.org")
    assert await disclosures(engine) == []


async def test_no_disclosure_when_the_audit_entry_cannot_be_written(
    api_settings, tokens, world: World, engine
) -> None:
    """If the disclosure cannot be recorded, nothing is shown (503), never unaudited PII."""
    settings = api_settings(limits={"statement_timeout_ms": 200})
    server, client = await start_api(settings, tokens)
    try:
        async with engine.connect() as conn, conn.begin():
            await conn.execute(text("LOCK TABLE audit_log IN ACCESS EXCLUSIVE MODE"))
            response = await client.get(f"/v1/deliveries/{world.sms}", as_="pii")
        assert response.status_code == 503
        assert PHONE not in response.text
        assert await disclosures(engine) == []
    finally:
        await client.client.aclose()
        await server.stop()
