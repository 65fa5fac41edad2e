"""``dispatcher dlq`` as the operator runs it (a subprocess), against a real PostgreSQL."""

import getpass
import json
import subprocess
import uuid

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.replay.cli import dispatcher
from tests.replay.test_replay_store import dead_letters, statuses

pytestmark = pytest.mark.postgres


def dlq(database: str, *args: str) -> subprocess.CompletedProcess[str]:
    return dispatcher("dlq", *args, env={"DISPATCHER_DATABASE_URL": database})


async def test_replay_refuses_without_filters_or_reason(
    engine: AsyncEngine, database: str
) -> None:
    """No filter without --all, and no --reason: exit 2, nothing is touched."""
    ids = await dead_letters(engine, 2)
    refused = dlq(database, "replay", "--reason", "back", "--yes")
    assert refused.returncode == 2, refused.stderr
    assert "--all" in refused.stderr
    unexplained = dlq(database, "replay", "--channel", "email", "--yes")
    assert unexplained.returncode == 2, unexplained.stderr
    assert "--reason" in unexplained.stderr
    assert await statuses(engine, ids) == ["dead", "dead"]


async def test_dry_run_shows_the_plan_and_changes_nothing(
    engine: AsyncEngine, database: str
) -> None:
    """--dry-run prints the exact count, groups and masked recipients, and exits 0."""
    ids = await dead_letters(engine, 3)
    result = dlq(database, "replay", "--all", "--dry-run")
    assert result.returncode == 0, result.stderr
    assert "3 dead letter(s)" in result.stdout
    assert "by channel: email=3" in result.stdout
    assert "example.org" not in result.stdout  # masked: p***@e***.org
    assert await statuses(engine, ids) == ["dead"] * 3


async def test_replay_creates_an_audited_job_and_cancel_stops_it(
    engine: AsyncEngine, database: str
) -> None:
    """A replay (--no-wait) is recorded with who, why and the filters; cancel ends it."""
    await dead_letters(engine, 2)
    created = dlq(
        database, "replay", "--channel", "email", "--reason", "relay fixed", "--yes",
        "--no-wait",
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    replay_id = created.stdout.split("replay ")[-1].split(":")[0]
    async with engine.connect() as conn:
        entry = (
            await conn.execute(
                text("SELECT detail FROM audit_log WHERE kind = 'replay.created'")
            )
        ).scalar_one()
    assert entry["by"] == getpass.getuser()
    assert entry["reason"] == "relay fixed"
    assert entry["filters"]["channels"] == ["email"]
    assert entry["total"] == 2
    listed = dlq(database, "replays")
    assert replay_id in listed.stdout
    assert "planned" in listed.stdout
    cancelled = dlq(database, "cancel", replay_id, "--reason", "wrong set")
    assert cancelled.returncode == 0, cancelled.stderr
    assert "cancelled" in cancelled.stdout
    again = dlq(database, "cancel", replay_id)
    assert again.returncode == 1


async def test_discard_marks_and_keeps(engine: AsyncEngine, database: str) -> None:
    """discard marks the selected dead letters discarded; the rows stay."""
    ids = await dead_letters(engine, 2)
    result = dlq(
        database, "discard", "--delivery-id", str(ids[0]), "--reason", "duplicate",
        "--yes",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert await statuses(engine, ids) == ["discarded", "dead"]


def test_an_unreachable_database_is_one_line() -> None:
    """No database: one line on stderr and exit 1, no traceback."""
    url = "postgresql+asyncpg://nobody:x@127.0.0.1:9/none"
    result = dlq(url, "list", "--summary")
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1, result.stderr
    assert "PostgreSQL is unavailable" in result.stderr


async def test_show_tells_one_dead_letters_story(
    engine: AsyncEngine, database: str
) -> None:
    """show: the event summary, masked recipient, attempts with lineage, and replays."""
    (delivery_id, _) = await dead_letters(engine, 2)
    created = dlq(
        database, "replay", "--delivery-id", str(delivery_id), "--reason", "relay fixed",
        "--yes", "--no-wait",
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    replay_id = created.stdout.split("replay ")[-1].split(":")[0]
    shown = dlq(database, "show", str(delivery_id))
    assert shown.returncode == 0, shown.stderr
    assert f"delivery {delivery_id} dead (email to p" in shown.stdout
    assert "example.org" not in shown.stdout  # masked
    assert "last error: auth via relay-1" in shown.stdout
    assert "#1 " in shown.stdout
    assert "initial" in shown.stdout
    assert f"{replay_id} " in shown.stdout
    assert "item=waiting" in shown.stdout
    assert "reason='relay fixed'" in shown.stdout
    as_json = json.loads(
        dlq(database, "show", str(delivery_id), "--json", "--show-recipient").stdout
    )
    assert as_json["recipient"] == "person0@example.org"
    assert as_json["status"] == "dead"
    assert [a["lineage"] for a in as_json["timeline"]] == ["initial"]
    assert as_json["timeline"][0]["error_class"] == "auth"
    assert [r["replay_id"] for r in as_json["replays"]] == [replay_id]
    missing = dlq(database, "show", str(uuid.uuid4()))
    assert missing.returncode == 1
    assert "no delivery" in missing.stderr
