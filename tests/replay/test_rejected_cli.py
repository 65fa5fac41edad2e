"""``dispatcher rejected list|show|replay`` as the operator runs it (a subprocess), on
rejected messages stored in a real PostgreSQL."""

import base64
import json
import subprocess
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from dispatcher.testing import event_bytes
from tests.replay.cli import dispatcher

pytestmark = pytest.mark.postgres


def rejected_cli(database: str, *args: str) -> subprocess.CompletedProcess[str]:
    return dispatcher("rejected", *args, env={"DISPATCHER_DATABASE_URL": database})


async def store_rejected(engine: AsyncEngine, body: bytes, reason: str) -> int:
    """A rejected message as ingest stores one."""
    async with engine.begin() as conn:
        row = await conn.execute(
            text(
                "INSERT INTO rejected_messages (source, reason, message, body, body_size,"
                " message_id) VALUES ('ingest', :reason, 'a rule', :body, :size, 'm-1')"
                " RETURNING id"
            ),
            {"reason": reason, "body": body, "size": len(body)},
        )
        rejected_id: int = row.scalar_one()
    return rejected_id


async def one(engine: AsyncEngine, sql: str, **params: Any) -> Any:
    async with engine.connect() as conn:
        return (await conn.execute(text(sql), params)).one()


async def test_list_and_show_keep_the_body_back_unless_asked(
    engine: AsyncEngine, database: str
) -> None:
    """list counts by reason; show gives reason, time and size, the body only with
    --show-body."""
    secret = b'{"subject": "person-with-a-name"'
    first = await store_rejected(engine, secret, "not_json")
    await store_rejected(engine, b"", "empty_body")
    await store_rejected(engine, b"[]", "not_an_object")
    summary = rejected_cli(database, "list", "--summary")
    assert summary.returncode == 0, summary.stderr
    assert "3 rejected message(s)" in summary.stdout
    assert "not_json=1" in summary.stdout
    listed = json.loads(
        rejected_cli(database, "list", "--code", "not_json", "--json").stdout
    )
    assert listed["count"] == 1
    assert [m["id"] for m in listed["messages"]] == [first]
    shown = rejected_cli(database, "show", str(first))
    assert shown.returncode == 0, shown.stderr
    assert f"{first} " in shown.stdout
    assert "not_json" in shown.stdout
    assert f"{len(secret)}B" in shown.stdout
    assert "person-with-a-name" not in shown.stdout
    assert (
        "person-with-a-name"
        in rejected_cli(database, "show", str(first), "--show-body").stdout
    )
    as_json = json.loads(
        rejected_cli(database, "show", str(first), "--show-body", "--json").stdout
    )
    assert base64.b64decode(as_json["body_base64"]) == secret
    assert "body_base64" not in json.loads(
        rejected_cli(database, "show", str(first), "--json").stdout
    )
    missing = rejected_cli(database, "show", "999999")
    assert missing.returncode == 1
    assert "no rejected message" in missing.stderr


async def test_a_replay_that_stores_everything_exits_0_and_is_listed_as_replayed(
    engine: AsyncEngine, database: str
) -> None:
    """A message rejected by a parser bug since fixed: stored, marked, exit 0."""
    body = event_bytes(recipients=[{"channel": "email", "to": "a@example.org"}])
    rejected_id = await store_rejected(engine, body, "internal_error")
    result = rejected_cli(
        database, "replay", "--code", "internal_error", "--reason", "parser fixed",
        "--yes",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "replayed: stored=1" in result.stdout
    row = await one(
        engine,
        "SELECT r.replayed_event_id, e.delivery_count FROM rejected_messages AS r"
        " JOIN events AS e ON e.id = r.replayed_event_id WHERE r.id = :id",
        id=rejected_id,
    )
    assert str(row.replayed_event_id) == json.loads(body)["event_id"]
    assert row.delivery_count == 1
    assert "0 rejected message(s)" in rejected_cli(database, "list").stdout
    assert "replayed as" in rejected_cli(database, "list", "--replayed").stdout


def test_an_unreachable_database_is_one_line() -> None:
    """No database: one line on stderr and exit 1, no traceback."""
    url = "postgresql+asyncpg://nobody:x@127.0.0.1:9/none"
    for args in (("list",), ("replay", "--all", "--dry-run")):
        result = rejected_cli(url, *args)
        assert result.returncode == 1
        assert result.stderr.count("\n") == 1, result.stderr
        assert "PostgreSQL is unavailable" in result.stderr
