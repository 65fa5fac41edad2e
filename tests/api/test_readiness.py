"""/readyz and `dispatcher check` share one readiness logic with per-component detail."""

import asyncio
import os
import subprocess
import sys
import time
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

from dispatcher.db.engine import create_engine
from dispatcher.db.migrate import upgrade
from dispatcher.delivery.service import DeliveryService
from dispatcher.events.kinds import ChannelKind
from tests.acceptance.faults import PrivatePostgres, free_port
from tests.api.conftest import Api, start_api
from tests.conftest import AMQP_URL
from tests.delivery.harness import SECRET

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


async def test_serve_readiness_reports_ingest_and_workers_and_flips_without_the_broker(
    make_settings, database, engine
) -> None:
    """In serve, /readyz and `check --serve` report ingest and worker loops: 503 if one is down."""
    import httpx

    from dispatcher.api.server import ApiServer
    from dispatcher.cli.serve import serve_services
    from dispatcher.health import check_dependencies
    from tests.tcp_relay import TcpRelay
    from tests.waiting import NotYet, wait_for

    amqp = urlsplit(AMQP_URL)
    assert amqp.hostname is not None
    assert amqp.port is not None
    async with TcpRelay(amqp.hostname, amqp.port) as relay:
        relayed = urlunsplit(
            amqp._replace(netloc=amqp.netloc.replace(f":{amqp.port}", f":{relay.port}"))
        )
        settings = make_settings(
            database,
            amqp_url=relayed,
            api={"port": 0},
            channels={
                "webhook": {
                    "endpoints": {
                        "safety-monitor": {
                            "url": "https://monitor.example.org/hook",
                            "secrets": [SECRET],
                        }
                    }
                }
            },
        )
        services = serve_services(settings, engine)
        for service in services:
            await service.start()
        server = services[-1]
        assert isinstance(server, ApiServer)
        client = httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}")

        async def readyz(status: int, **expected: bool) -> Any:
            response = await client.get("/readyz")
            seen = components(response.json())
            if response.status_code == status and all(
                seen.get(name) is ok for name, ok in expected.items()
            ):
                return seen
            return NotYet((response.status_code, seen))

        try:
            seen = await wait_for(lambda: readyz(200, ingest=True), "ready", timeout=30)
            assert seen == {
                "postgresql": True,
                "schema": True,
                "rabbitmq": True,
                "ingest": True,
                "worker.webhook": True,
            }
            # `dispatcher check --serve` reads the same components from /readyz.
            on_port = settings.model_copy(
                update={"api": settings.api.model_copy(update={"port": server.port})}
            )
            assert await check_dependencies(on_port, serve=True) == []
            relay.blackhole()
            relay.reset()
            await wait_for(
                lambda: readyz(503, ingest=False), "not ready: ingest", timeout=30
            )
            relay.heal()
            await wait_for(lambda: readyz(200, ingest=True), "ready again", timeout=60)
            delivery = services[1]
            assert isinstance(delivery, DeliveryService)
            await delivery.workers[ChannelKind.WEBHOOK].stop()
            await wait_for(
                lambda: readyz(503, **{"worker.webhook": False}),
                "not ready: worker",
                timeout=30,
            )
            assert await check_dependencies(on_port, serve=True) == [
                "worker.webhook: claim loop not running"
            ]
        finally:
            await client.aclose()
            for service in reversed(services):
                await service.stop()
