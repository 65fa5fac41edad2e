"""The README's demo command, run as a user would: it must deliver and show a dead letter."""

import os
import subprocess
import sys

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.acceptance.test_ingest_faults import env_for

pytestmark = [
    pytest.mark.slow,
    pytest.mark.postgres,
    pytest.mark.rabbitmq,
    pytest.mark.usefixtures("cleanup_broker"),
]


async def test_demo_delivers_to_the_three_local_sinks_and_dead_letters_one(
    database: str, engine: AsyncEngine, names: dict[str, str]
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "dispatcher", "demo", "--events", "5"],
        env={**os.environ, **env_for(names, database)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    # 5 events, 2 of them high or critical: 2 x (email, SMS, webhook), and 1 for the retired endpoint.
    assert (
        "local sinks received: 2 emails, 2 SMS, 2 webhooks (1 refused with 404)"
        in result.stdout
    )
    async with engine.connect() as conn:
        rows = (
            await conn.execute(
                text(
                    "SELECT channel, status, count(*) FROM deliveries GROUP BY 1, 2 ORDER BY 1, 2"
                )
            )
        ).all()
    assert [tuple(r) for r in rows] == [
        ("email", "delivered", 2),
        ("sms", "delivered", 2),
        ("webhook", "dead", 1),
        ("webhook", "delivered", 2),
    ]
    assert (
        "+15550100001" not in result.stdout + result.stderr
    )  # numbers are never logged
