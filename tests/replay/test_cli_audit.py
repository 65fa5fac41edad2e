"""What the CLI puts in the audit log itself: unmasked PII it shows, and the start of a
``rejected replay`` run (a subprocess as the operator runs it, a real PostgreSQL)."""

import getpass
import json
import os
import subprocess
import sys
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from dispatcher.testing import event_bytes
from tests.replay.test_dlq_cli import dlq
from tests.replay.test_rejected_cli import rejected_cli, store_rejected
from tests.replay.test_replay_store import dead_letters
from tests.waiting import NotYet, wait_for

pytestmark = pytest.mark.postgres


async def entries(engine: AsyncEngine, kind: str) -> list[Any]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT event_id, delivery_id, detail FROM audit_log"
                " WHERE kind = :kind ORDER BY id"
            ),
            {"kind": kind},
        )
        return list(rows)


async def test_show_body_records_the_disclosure_and_plain_show_does_not(
    engine: AsyncEngine, database: str
) -> None:
    """rejected show --show-body writes one cli.pii_disclosed entry; show alone none."""
    rejected_id = await store_rejected(engine, b'{"subject": "x"', "not_json")
    assert rejected_cli(database, "show", str(rejected_id)).returncode == 0
    assert rejected_cli(database, "show", str(rejected_id), "--json").returncode == 0
    assert await entries(engine, "cli.pii_disclosed") == []
    shown = rejected_cli(database, "show", str(rejected_id), "--show-body")
    assert shown.returncode == 0, shown.stderr
    [entry] = await entries(engine, "cli.pii_disclosed")
    assert entry.detail == {
        "by": getpass.getuser(),
        "command": "rejected show --show-body",
        "count": 1,
        "ids": [str(rejected_id)],
    }
    assert rejected_cli(database, "show", "999999", "--show-body").returncode == 1
    assert len(await entries(engine, "cli.pii_disclosed")) == 1


async def test_show_recipient_records_the_disclosure_and_plain_show_does_not(
    engine: AsyncEngine, database: str
) -> None:
    """dlq show --show-recipient writes one cli.pii_disclosed entry; show alone none."""
    [delivery_id] = await dead_letters(engine, 1)
    assert dlq(database, "show", str(delivery_id)).returncode == 0
    assert await entries(engine, "cli.pii_disclosed") == []
    shown = dlq(database, "show", str(delivery_id), "--show-recipient")
    assert shown.returncode == 0, shown.stderr
    [entry] = await entries(engine, "cli.pii_disclosed")
    assert entry.delivery_id == delivery_id
    assert entry.event_id is not None
    assert entry.detail == {
        "by": getpass.getuser(),
        "command": "dlq show --show-recipient",
        "count": 1,
        "ids": [str(delivery_id)],
    }


async def test_a_replay_that_dies_part_way_left_its_start_on_record(
    engine: AsyncEngine, database: str
) -> None:
    """The start entry is committed before any message is stored: killed while its
    first chunk waits, the run is still in the audit log (and nothing was replayed)."""
    body = event_bytes(recipients=[{"channel": "email", "to": "a@example.org"}])
    rejected_id = await store_rejected(engine, body, "internal_error")
    async with engine.connect() as holder:
        # Storing the event waits on this lock: the run is held inside its first chunk.
        await holder.execute(text("LOCK TABLE events IN EXCLUSIVE MODE"))
        run = subprocess.Popen(
            [
                sys.executable, "-m", "dispatcher", "rejected", "replay",
                "--id", str(rejected_id), "--reason", "parser fixed", "--yes",
            ],
            env={**os.environ, "DISPATCHER_DATABASE_URL": database},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:

            async def started() -> Any:
                found = await entries(engine, "message.replay_started")
                return found[0] if found else NotYet("no start entry yet")

            entry = await wait_for(started, "the replay's start entry", timeout=60)
            assert run.poll() is None, "the run was not held by the lock"
        finally:
            run.kill()
            run.wait()
        await holder.rollback()
    assert entry.detail == {
        "by": getpass.getuser(),
        "reason": "parser fixed",
        "filters": {"ids": [rejected_id]},
        "count": 1,
    }
    assert await entries(engine, "message.replayed") == []
    async with engine.connect() as conn:
        replayed = await conn.scalar(
            text("SELECT replayed_at FROM rejected_messages WHERE id = :id"),
            {"id": rejected_id},
        )
    assert replayed is None


async def test_a_finished_replay_has_its_start_and_its_summary(
    engine: AsyncEngine, database: str
) -> None:
    """A run that finishes has one start entry and one summary with its counts."""
    body = event_bytes(recipients=[{"channel": "email", "to": "a@example.org"}])
    await store_rejected(engine, body, "internal_error")
    done = rejected_cli(
        database, "replay", "--code", "internal_error", "--reason", "fixed", "--yes"
    )
    assert done.returncode == 0, done.stderr
    [start] = await entries(engine, "message.replay_started")
    assert start.detail["count"] == 1
    summary = [
        e.detail
        for e in await entries(engine, "message.replayed")
        if "rejected_id" not in e.detail
    ]
    assert [s["counts"] for s in summary] == [{"stored": 1, "gone": 0}]
    assert json.dumps(start.detail["filters"]) == json.dumps(summary[0]["filters"])
