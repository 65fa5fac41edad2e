"""Delivery across real processes: two replicas on one stream, a replica killed mid-send,
and one killed between the commit of its fast-path leases and their sends."""

import asyncio
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from dispatcher.sinks.webhook import WebhookSink
from tests.acceptance.faults import Dispatcher, Start
from tests.acceptance.test_ingest_faults import env_for
from tests.delivery.harness import Stack, event_to, webhook_channel
from tests.tcp_relay import TcpRelay
from tests.waiting import NotYet, wait_for

pytestmark = [
    pytest.mark.slow,
    pytest.mark.postgres,
    pytest.mark.rabbitmq,
    pytest.mark.usefixtures("cleanup_broker"),
]

ENDPOINTS = ("crisis-line", "safety-monitor", "case-system")


def write_config(path: Path, url_for: Callable[[str], str], **overrides: Any) -> Path:
    """The webhook channel with ``ENDPOINTS`` at ``url_for(path)`` (e.g. ``sink.url``)."""
    channel = webhook_channel(url_for, ENDPOINTS, **overrides)
    channel["allow_private_networks"] = ["127.0.0.0/8"]
    path.write_text(yaml.safe_dump({"channels": {"webhook": channel}}))
    return path


async def delivered(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        sql = "SELECT count(*) FROM deliveries WHERE status = 'delivered'"
        return int((await conn.execute(text(sql))).scalar_one())


async def wait_delivered(engine: AsyncEngine, expected: int, timeout: float) -> int:
    """The number delivered once it reaches ``expected`` (callers assert not more)."""

    async def reached() -> int | NotYet:
        n = await delivered(engine)
        return n if n >= expected else NotYet(n)

    return await wait_for(reached, f"{expected} delivered", timeout=timeout)


async def test_two_replicas_on_one_stream_never_send_a_delivery_twice(
    start: Start,
    make_settings: Callable[..., Any],
    database: str,
    engine: AsyncEngine,
    names: dict[str, str],
    tmp_path: Path,
) -> None:
    async with WebhookSink(seed=7) as sink:
        for name in ENDPOINTS:
            sink.flaky(f"/{name}", 0.2)  # retries too, not only first tries
        config = write_config(tmp_path / "config.yaml", sink.url)
        env = {**env_for(names, database), "DISPATCHER_CONFIG": str(config)}
        replicas = [await start(env, tmp_path / f"replica-{n}.log") for n in (1, 2)]
        events = [event_to(*[("webhook", n) for n in ENDPOINTS]) for _ in range(300)]
        publisher = Stack(make_settings(database), engine, deliver=False)
        await publisher.publish(*events)
        done = await wait_delivered(engine, 900, timeout=120)
        for replica in replicas:
            replica.signal(signal.SIGTERM)
        assert [r.wait(60) for r in replicas] == [0, 0]
    assert done == 900
    assert sink.duplicates() == []
    assert sum(sink.accepted.values()) == 900
    logs = [(tmp_path / f"replica-{n}.log").read_text() for n in (1, 2)]
    assert all("dispatcher.delivery.started" in log for log in logs)


async def test_replica_killed_mid_delivery_duplicates_only_inside_the_window(
    start: Start,
    make_settings: Callable[..., Any],
    database: str,
    engine: AsyncEngine,
    names: dict[str, str],
    tmp_path: Path,
) -> None:
    async with WebhookSink(seed=3) as sink:
        for name in ENDPOINTS:
            # The sink counts a request as accepted on arrival, then trickles the body for
            # ~0.3 s: a kill in that time is exactly "provider accepted, outcome unrecorded".
            sink.trickle(f"/{name}", size=3, interval=0.1)
        config = write_config(
            tmp_path / "config.yaml",
            sink.url,
            lease_seconds=3.0,
            deadline_seconds=2.0,
            concurrency=8,
            critical_reserve=0,
        )
        env = {**env_for(names, database), "DISPATCHER_CONFIG": str(config)}
        first = await start(env, tmp_path / "first.log")
        events = [event_to(*[("webhook", n) for n in ENDPOINTS]) for _ in range(40)]
        await Stack(make_settings(database), engine, deliver=False).publish(*events)
        await wait_for(lambda: len(sink.received) >= 20, "20 requests at the sink")
        first.signal(signal.SIGKILL)
        # The sink runs on this test's event loop: block it (a plain wait) and requests
        # already sent sit unread, and attempts can even run into their deadline there.
        await asyncio.to_thread(first.wait, 10)
        # Let the sink take in what the dead replica had already sent: everything it has
        # before the second replica starts came from the first, so it is the set of sends
        # under way (or done) when the replica died.
        await asyncio.sleep(0.5)
        before_kill = {r.webhook_id for r in sink.received}
        await start(env, tmp_path / "second.log")
        done = await wait_delivered(engine, 120, timeout=120)
    assert done == 120
    assert len(sink.accepted) == 120  # every delivery reached its endpoint
    duplicates = set(sink.duplicates())
    # Only sends that were under way when the replica died may repeat: the documented window.
    assert duplicates <= before_kill


async def test_ingest_and_one_channel_run_as_separate_processes(
    make_settings: Callable[..., Any],
    database: str,
    engine: AsyncEngine,
    names: dict[str, str],
    tmp_path: Path,
) -> None:
    """`serve --ingest-only` stores; `worker --channel webhook` delivers webhooks only."""
    async with WebhookSink() as sink:
        config = yaml.safe_load(write_config(tmp_path / "c.yaml", sink.url).read_text())
        config["channels"]["email"] = {
            "enabled": True,
            "providers": [
                {
                    "name": "relay",
                    "host": "127.0.0.1",
                    "port": 9,
                    "tls": "none",
                    "from_address": "dispatcher@example.org",
                }
            ],
        }
        path = tmp_path / "config.yaml"
        path.write_text(yaml.safe_dump(config))
        env = {**env_for(names, database), "DISPATCHER_CONFIG": str(path)}
        processes = [
            Dispatcher(env, tmp_path / "ingest.log", ["serve", "--ingest-only"]),
            Dispatcher(
                env, tmp_path / "worker.log", ["worker", "--channel", "webhook"]
            ),
        ]
        try:
            for process in processes:
                await process.wait_ready()
            events = [
                event_to(("webhook", "crisis-line"), ("email", "team@example.org"))
                for _ in range(5)
            ]
            await Stack(make_settings(database), engine, deliver=False).publish(*events)
            assert await wait_delivered(engine, 5, timeout=30) == 5
            # An observation window, not a wait: no process may try the email rows.
            await asyncio.sleep(1.0)
            async with engine.connect() as conn:
                rows = (
                    await conn.execute(
                        text(
                            "SELECT channel, status, attempts FROM deliveries ORDER BY channel"
                        )
                    )
                ).all()
        finally:
            for process in processes:
                process.close()
    assert {tuple(r) for r in rows} == {
        ("email", "pending", 0),
        ("webhook", "delivered", 1),
    }
    assert "dispatcher.ingest.started" not in (tmp_path / "worker.log").read_text()

    status = subprocess.run(
        [sys.executable, "-m", "dispatcher", "status"],
        env={**os.environ, **env_for(names, database)},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    lines = [
        " ".join(line.replace("│", " ").split()) for line in status.stdout.splitlines()
    ]
    assert any(line.startswith("webhook delivered 5") for line in lines), status.stdout
    assert any(line.startswith("email pending 5") for line in lines), status.stdout


async def test_a_worker_serves_its_metrics_on_the_metrics_port(
    make_settings: Callable[..., Any],
    database: str,
    engine: AsyncEngine,
    names: dict[str, str],
    tmp_path: Path,
) -> None:
    """`dispatcher worker` with `metrics_port` set serves /metrics: its attempts show."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    async with WebhookSink() as sink:
        config = write_config(tmp_path / "config.yaml", sink.url)
        env = {**env_for(names, database), "DISPATCHER_CONFIG": str(config)}
        processes = [
            Dispatcher(env, tmp_path / "ingest.log", ["serve", "--ingest-only"]),
            Dispatcher(
                {**env, "DISPATCHER_METRICS_PORT": str(port)},
                tmp_path / "worker.log",
                ["worker"],
            ),
        ]
        try:
            for process in processes:
                await process.wait_ready()
            events = [event_to(("webhook", "crisis-line")) for _ in range(3)]
            await Stack(make_settings(database), engine, deliver=False).publish(*events)
            assert await wait_delivered(engine, 3, timeout=30) == 3
            async with httpx.AsyncClient() as client:

                async def scraped() -> str | NotYet:
                    page = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
                    head = 'dispatcher_deliveries_total{channel="webhook"'
                    delivered = [
                        line
                        for line in page.splitlines()
                        if line.startswith(head) and 'outcome="delivered"' in line
                    ]
                    return (
                        page
                        if [line.rsplit(" ", 1)[1] for line in delivered] == ["3.0"]
                        else NotYet(delivered)
                    )

                page = await wait_for(scraped, "the worker's metrics to show 3")
        finally:
            for process in processes:
                process.close()
    assert "dispatcher_delivery_attempts_total" in page


async def test_replica_killed_after_commit_has_its_fast_path_rows_sent_by_another(
    start: Start,
    make_settings: Callable[..., Any],
    database: str,
    engine: AsyncEngine,
    names: dict[str, str],
    tmp_path: Path,
) -> None:
    """Rows leased to a replica on insert, none sent when it is SIGKILLed, are sent once
    by another replica after the lease runs out."""
    lease = 4.0
    async with WebhookSink() as sink, TcpRelay("127.0.0.1", sink.port) as relay:
        # The first replica reaches the endpoints through a path that accepts
        # connections and drops every byte: its attempts start and send nothing.
        relay.blackhole()
        settings = {
            "lease_seconds": lease,
            "deadline_seconds": 3.0,
            "poll_interval": 0.2,
        }
        cut = write_config(
            tmp_path / "cut.yaml",
            lambda p: f"http://127.0.0.1:{relay.port}{p}",
            **settings,
        )
        config = write_config(tmp_path / "config.yaml", sink.url, **settings)
        env = env_for(names, database)
        first = await start(
            {**env, "DISPATCHER_CONFIG": str(cut)},
            tmp_path / "first.log",
        )
        events = [event_to(*[("webhook", n) for n in ENDPOINTS]) for _ in range(3)]
        await Stack(make_settings(database), engine, deliver=False).publish(*events)

        async def leased() -> list[Any] | NotYet:
            async with engine.connect() as conn:
                rows = (await conn.execute(text("SELECT * FROM deliveries"))).all()
            on_insert = [
                r
                for r in rows
                if r.status == "in_flight" and r.updated_at == r.created_at
            ]
            return on_insert if len(on_insert) == 9 else NotYet(len(on_insert))

        rows = await wait_for(leased, "9 rows leased on insert", timeout=30)
        first.signal(signal.SIGKILL)
        await asyncio.to_thread(first.wait, 10)
        assert sink.received == []
        await start({**env, "DISPATCHER_CONFIG": str(config)}, tmp_path / "second.log")
        assert await wait_delivered(engine, 9, timeout=60) == 9
        async with engine.connect() as conn:
            after = {
                r.id: r
                for r in (await conn.execute(text("SELECT * FROM deliveries"))).all()
            }
    assert len(sink.accepted) == 9
    assert sink.duplicates() == []
    owners = {r.lease_owner for r in rows}
    assert len(owners) == 1
    for row in rows:
        # Not before the dead replica's lease ran out; its attempt left no record.
        assert after[row.id].delivered_at >= row.next_attempt_at
        assert after[row.id].attempts == 2
