"""/readyz and `dispatcher check` share one readiness logic with per-component detail."""

import asyncio
import os
import subprocess
import sys
import time
from typing import Any

import pytest

from dispatcher.db.engine import create_engine
from dispatcher.db.migrate import upgrade
from tests.acceptance.faults import PrivatePostgres, free_port
from tests.api.conftest import Api, start_api
from tests.conftest import AMQP_URL

pytestmark = pytest.mark.postgres


def components(body: Any) -> dict[str, bool]:
    return {c["name"]: c["ok"] for c in body["components"]}


async def test_ready_when_everything_answers(api: Api) -> None:
    """PostgreSQL, schema and RabbitMQ all fine: 200 with each component ok."""
    response = await api.get("/readyz", None)
    assert response.status_code == 200
    assert components(response.json()) == {
        "postgresql": True,
        "schema": True,
        "rabbitmq": True,
    }


async def test_not_ready_when_rabbitmq_is_unreachable(
    make_settings, database, tokens
) -> None:
    """RabbitMQ on a closed port: 503, and the detail names RabbitMQ only."""
    closed = f"amqp://guest:guest@127.0.0.1:{free_port()}/"
    settings = make_settings(database, amqp_url=closed, api={"port": 0})
    server, client = await start_api(settings, tokens)
    try:
        response = await client.get("/readyz", None)
        assert response.status_code == 503
        body = response.json()
        assert components(body) == {
            "postgresql": True,
            "schema": True,
            "rabbitmq": False,
        }
        assert "guest" not in response.text  # no URL, no credential
    finally:
        await client.client.aclose()
        await server.stop()


async def test_not_ready_when_schema_is_behind(api_settings, tokens, engine) -> None:
    """A database not at head: 503 naming the schema component and the fix."""
    from sqlalchemy import text

    async with engine.begin() as conn:
        await conn.execute(text("UPDATE alembic_version SET version_num = '0003'"))
    server, client = await start_api(api_settings(), tokens)
    try:
        response = await client.get("/readyz", None)
        assert response.status_code == 503
        detail = {c["name"]: c["detail"] for c in response.json()["components"]}
        assert "dispatcher migrate" in detail["schema"]
    finally:
        await client.client.aclose()
        await server.stop()


@pytest.fixture
def private_postgres():
    pg = PrivatePostgres()
    pg.start()
    yield pg
    pg.destroy()


async def test_readiness_flips_when_postgres_stops_and_returns(
    make_settings, private_postgres: PrivatePostgres, tokens
) -> None:
    """Ready, then 503 naming PostgreSQL while it is stopped, then ready again."""
    engine = create_engine(private_postgres.url, pool_size=1)
    await upgrade(engine)
    await engine.dispose()
    settings = make_settings(private_postgres.url, api={"port": 0})
    server, client = await start_api(settings, tokens)

    async def wait_for(status: int) -> Any:
        deadline = time.monotonic() + 30
        while True:
            response = await client.get("/readyz", None)
            if response.status_code == status or time.monotonic() > deadline:
                assert response.status_code == status, response.text
                return response.json()
            await asyncio.sleep(0.2)

    try:
        await wait_for(200)
        await asyncio.to_thread(private_postgres.stop)
        down = await wait_for(503)
        assert components(down)["postgresql"] is False
        assert components(down)["rabbitmq"] is True
        assert (await client.get("/healthz", None)).status_code == 200
        await asyncio.to_thread(private_postgres.start)
        await wait_for(200)
    finally:
        await client.client.aclose()
        await server.stop()


def test_check_command_reports_each_unreachable_component() -> None:
    """`dispatcher check` uses the same logic: one line per problem, exit 1."""
    env = {
        **os.environ,
        "DISPATCHER_DATABASE_URL": f"postgresql+asyncpg://u:secret-pw@127.0.0.1:{free_port()}/x",
        "DISPATCHER_AMQP_URL": f"amqp://u:secret-pw@127.0.0.1:{free_port()}/",
    }
    result = subprocess.run(
        [sys.executable, "-m", "dispatcher", "check"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    lines = [
        line for line in result.stderr.splitlines() if line.startswith("not ready")
    ]
    assert len(lines) == 2
    assert "PostgreSQL is unavailable" in lines[0]
    assert "RabbitMQ is unavailable" in lines[1]
    assert "secret-pw" not in result.stderr + result.stdout


def test_check_command_is_ok_when_ready(database: str) -> None:
    """`dispatcher check` prints ok and exits 0 when every component is ready."""
    env = {
        **os.environ,
        "DISPATCHER_DATABASE_URL": database,
        "DISPATCHER_AMQP_URL": AMQP_URL,
    }
    result = subprocess.run(
        [sys.executable, "-m", "dispatcher", "check"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
