"""Ingest stores the keyed hash of each delivery's recipient when a key is configured."""

import pytest
from sqlalchemy import text

from dispatcher.events.blind_index import recipient_digest
from dispatcher.events.kinds import ChannelKind
from tests.api import seed

pytestmark = pytest.mark.postgres
KEY = b"k" * 32


async def stored(engine) -> dict[str, bytes | None]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT recipient, recipient_hash FROM deliveries")
        )
        return {r.recipient: r.recipient_hash for r in rows}


async def test_each_delivery_stores_the_hmac_of_its_recipient(engine) -> None:
    """With a key: HMAC(key, channel:recipient) beside each delivery, no clear copy."""
    recipients = [
        {"channel": "email", "to": "Jane.Doe@example.org"},
        {"channel": "sms", "to": "+447700900123"},
        {"channel": "webhook", "to": "ops-hook"},
    ]
    await seed.events(engine, [seed.event(recipients=recipients)], key=KEY)
    hashes = await stored(engine)
    for r in recipients:
        expected = recipient_digest(KEY, ChannelKind(r["channel"]), r["to"])
        assert hashes[r["to"]] == expected
        assert r["to"].encode() not in expected
    assert hashes["Jane.Doe@example.org"] == recipient_digest(
        KEY, ChannelKind.EMAIL, "jane.doe@example.org"
    )


async def test_without_a_key_the_hash_is_null(engine) -> None:
    """Without a key nothing is hashed (recipient search then says it is disabled)."""
    await seed.events(
        engine,
        [seed.event(recipients=[{"channel": "sms", "to": "+447700900123"}])],
        key=None,
    )
    assert await stored(engine) == {"+447700900123": None}
