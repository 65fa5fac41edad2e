"""``dispatcher rejected replay`` end to end: messages rejected by the real ingest (real
RabbitMQ and PostgreSQL), the cause fixed in the configuration, the CLI run as the
operator runs it (a subprocess), the events delivered by the real webhook worker to the
local sink, each once."""

import getpass
import json
import subprocess
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from dispatcher.settings import Settings
from dispatcher.sinks.webhook import WebhookSink
from tests.delivery.harness import Stack, event_to, webhook_channel
from tests.replay.cli import dispatcher
from tests.waiting import NotYet, wait_for

pytestmark = [pytest.mark.postgres, pytest.mark.rabbitmq]

#: The ingest limit of the fixed configuration: a body larger than this now fails anew.
SMALL_LIMIT = 1024


def rejected_cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI with the fixed configuration file and nothing from DISPATCHER_*."""
    return dispatcher("--config", str(config), "rejected", *args, own_settings=True)


def config_file(tmp_path: Path, settings: Settings, overrides: dict[str, Any]) -> Path:
    """The YAML an operator would hand the CLI: the same database, broker and channels."""
    doc = {
        "database_url": settings.database_url.get_secret_value(),
        "amqp_url": settings.amqp_url.get_secret_value(),
        "exchange": settings.exchange,
        "queue_prefix": settings.queue_prefix,
        **overrides,
    }
    path = tmp_path / "dispatcher.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


async def rows(engine: AsyncEngine, sql: str, **params: Any) -> list[Any]:
    async with engine.connect() as conn:
        return list((await conn.execute(text(sql), params)).all())


async def rejected_by_message(engine: AsyncEngine, n: int) -> dict[str, Any]:
    """The rejected rows, by AMQP message id (the publisher sends the event_id), once
    there are ``n``."""

    async def stored() -> dict[str, Any] | NotYet:
        found = await rows(engine, "SELECT * FROM rejected_messages ORDER BY id")
        return (
            {r.message_id: r for r in found} if len(found) >= n else NotYet(len(found))
        )

    return await wait_for(stored, f"{n} rejected messages", timeout=30)


def event_ids_received(sink: WebhookSink, path: str) -> Counter[str]:
    return Counter(
        json.loads(r.body)["event_id"]
        for r in sink.received_on(path)
        if r.status == 200
    )


async def test_a_fixed_rejection_is_replayed_through_ingest_and_delivered_once(  # noqa: PLR0915 - one story
    engine: AsyncEngine,
    database: str,
    make_settings: Callable[..., Settings],
    cleanup_broker: None,
    webhook_sink: WebhookSink,
    tmp_path: Path,
) -> None:
    """Unknown endpoint, endpoint added, replay: stored and delivered once; a duplicate is
    not stored twice; what still fails keeps its row with the new reason; audited."""
    before = make_settings(
        database, channels={"webhook": webhook_channel(webhook_sink.url, ["ops-a"])}
    )
    fixed_overrides: dict[str, Any] = {
        "channels": {"webhook": webhook_channel(webhook_sink.url, ["ops-a", "ops-b"])},
        "ingest": {"max_body_bytes": SMALL_LIMIT},
    }
    fixed = make_settings(database, **fixed_overrides)
    config = config_file(tmp_path, fixed, fixed_overrides)
    fixable = event_to(("webhook", "ops-b"))
    republished = event_to(("webhook", "ops-b"))
    typo = event_to(("webhook", "ops-typo"))
    # Fixing the endpoint reveals the next problem: the body is over the new limit.
    oversized = event_to(("webhook", "ops-b"), data={"text": "x" * 2 * SMALL_LIMIT})
    async with Stack(before, engine, deliver=False) as s:
        await s.publish(fixable, republished, typo, oversized)
        found = await rejected_by_message(engine, 4)
    assert {r.reason for r in found.values()} == {"unknown_endpoint"}
    ids = {name: found[e["event_id"]].id for name, e in (
        ("fixable", fixable), ("republished", republished), ("typo", typo),
        ("oversized", oversized),
    )}  # fmt: skip

    async with Stack(fixed, engine) as s:
        # The publisher sent one of them again after the fix: stored and delivered now.
        await s.publish(republished)
        await s.wait_deliveries(
            lambda d: [r.status for r in d] == ["delivered"],
            event_ids=[uuid.UUID(republished["event_id"])],
        )

        refused = rejected_cli(config, "replay", "--reason", "ops-b added", "--yes")
        assert refused.returncode == 2, refused.stderr
        assert "--all" in refused.stderr

        dry = rejected_cli(config, "replay", "--code", "unknown_endpoint", "--dry-run")
        assert dry.returncode == 0, dry.stderr
        assert "4 rejected message(s)" in dry.stdout
        assert "reason now: unknown_endpoint=4" in dry.stdout
        for part in ("stored=1", "duplicate=1", "still_rejected=2"):
            assert part in dry.stdout, dry.stdout
        assert "would still fail:" in dry.stdout
        assert "too_large=1" in dry.stdout
        assert not await rows(
            engine, "SELECT 1 FROM audit_log WHERE kind = 'message.replayed'"
        )
        assert not await rows(
            engine, "SELECT 1 FROM rejected_messages WHERE replayed_at IS NOT NULL"
        )

        run = rejected_cli(
            config, "replay", "--code", "unknown_endpoint", "--reason", "ops-b added",
            "--yes",
        )  # fmt: skip
        assert run.returncode == 1, run.stderr  # partial: two are still rejected
        assert "stored=1" in run.stdout
        assert "still rejected: " in run.stdout

        await s.wait_deliveries(
            lambda d: [r.status for r in d] == ["delivered"],
            event_ids=[uuid.UUID(fixable["event_id"])],
        )
        by_id = rejected_cli(
            config, "replay", "--id", str(ids["fixable"]), "--reason", "again", "--yes"
        )
        assert by_id.returncode == 0, by_id.stderr
        assert "0 rejected message(s)" in by_id.stdout  # replayed: never offered again
        again = rejected_cli(
            config, "replay", "--all", "--reason", "once more", "--yes"
        )
        assert again.returncode == 1, again.stderr
        assert "2 rejected message(s)" in again.stdout  # the two still rejected only

    received = event_ids_received(webhook_sink, "/ops-b")
    assert received[fixable["event_id"]] == 1
    assert received[republished["event_id"]] == 1
    stored = await rows(
        engine,
        "SELECT id, delivery_count FROM events WHERE id = ANY(:ids)",
        ids=[uuid.UUID(e["event_id"]) for e in (fixable, republished, typo, oversized)],
    )
    assert sorted(str(r.id) for r in stored) == sorted(
        [fixable["event_id"], republished["event_id"]]
    )
    after = {r.id: r for r in await rows(engine, "SELECT * FROM rejected_messages")}
    assert str(after[ids["fixable"]].replayed_event_id) == fixable["event_id"]
    assert str(after[ids["republished"]].replayed_event_id) == republished["event_id"]
    assert after[ids["typo"]].replayed_at is None
    assert after[ids["typo"]].reason == "unknown_endpoint"
    assert after[ids["typo"]].earlier_reasons == []
    assert after[ids["oversized"]].replayed_at is None
    assert after[ids["oversized"]].reason == "too_large"
    (earlier,) = after[ids["oversized"]].earlier_reasons
    assert earlier["reason"] == "unknown_endpoint"
    assert earlier["replay_reason"] == "ops-b added"

    audit = await rows(
        engine,
        "SELECT event_id, detail FROM audit_log WHERE kind = 'message.replayed' "
        "ORDER BY id",
    )
    runs = [a.detail for a in audit if "rejected_id" not in a.detail]
    assert runs[0]["by"] == getpass.getuser()
    assert runs[0]["reason"] == "ops-b added"
    assert runs[0]["filters"] == {"reasons": ["unknown_endpoint"]}
    assert runs[0]["counts"] == {
        "stored": 1,
        "duplicate": 1,
        "still_rejected": 2,
        "gone": 0,
    }
    first = {a.detail["rejected_id"]: a for a in audit[:4]}
    assert first[ids["fixable"]].detail["outcome"] == "stored"
    assert str(first[ids["fixable"]].event_id) == fixable["event_id"]
    assert first[ids["republished"]].detail["outcome"] == "duplicate"
    assert first[ids["oversized"]].detail["new_reason"] == "too_large"
    assert first[ids["oversized"]].detail["old_reason"] == "unknown_endpoint"
    assert runs[1]["counts"] == {"still_rejected": 2, "gone": 0}
