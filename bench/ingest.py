"""Ingest benchmark: dispatcher vs a naive per-message consumer, same harness, same schema.

    .venv/bin/python bench/ingest.py [--events 20000] [--latency-seconds 15] [--profile]

Measures drain (queue preloaded, consumer alone), live (publisher running), publish-to-commit
latency at a fixed 200 events/s, consumer CPU and peak RSS. Writes bench/results/*.json.
"""

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
from proc import Proc
from sqlalchemy.engine import make_url

from dispatcher.db.engine import create_engine
from dispatcher.db.migrate import upgrade
from dispatcher.publisher import Publisher
from dispatcher.testing import make_event

ROOT = Path(__file__).resolve().parents[1]
AMQP = os.environ.get("DISPATCHER_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
PG = os.environ.get(
    "DISPATCHER_DATABASE_URL",
    "postgresql+asyncpg://dispatcher:dispatcher@127.0.0.1:5432/dispatcher",
)
RECIPIENTS = [
    {"channel": "email", "to": "crisis-team@example.org"},
    {"channel": "sms", "to": "+15551234567"},
    {"channel": "webhook", "to": "safety-monitor"},
]


def dsn(database: str, driver: str = "postgresql") -> str:
    return (
        make_url(PG)
        .set(drivername=driver, database=database)
        .render_as_string(hide_password=False)
    )


def bodies(n: int, stamp: bool = False) -> list[tuple[bytes, str, str | None]]:
    out = []
    for _ in range(n):
        event = make_event(recipients=RECIPIENTS)
        if stamp:
            event["data"]["bench_sent_at"] = time.time()
        out.append((json.dumps(event).encode(), "crisis.detected", event["event_id"]))
    return out


def start_consumer(kind: str, env: dict[str, str], log: Path) -> Proc:
    """The consumer under test as a subprocess, started and ready."""
    if kind == "dispatcher":
        proc = Proc(
            [sys.executable, "-m", "dispatcher", "serve"],
            env,
            log,
            "dispatcher.serving",
        )
    else:
        cmd = [sys.executable, str(ROOT / "bench" / "naive_consumer.py")]
        proc = Proc(cmd, env, log, "naive.serving")
    proc.wait_ready()
    return proc


async def count(conn: asyncpg.Connection) -> int:
    return int(await conn.fetchval("SELECT count(*) FROM events"))


async def wait_count(conn: asyncpg.Connection, n: int, timeout: float = 300) -> float:
    deadline = time.monotonic() + timeout
    while (c := await count(conn)) < n:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {c}/{n} stored")
        await asyncio.sleep(0.02)
    return time.monotonic()


async def fresh_database() -> str:
    name = f"bench_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(dsn("postgres"))
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    engine = create_engine(dsn(name, "postgresql+asyncpg"), pool_size=1)
    await upgrade(engine)
    await engine.dispose()
    return name


async def drop_database(name: str) -> None:
    admin = await asyncpg.connect(dsn("postgres"))
    try:
        for attempt in range(30):
            try:
                await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            except asyncpg.InsufficientPrivilegeError:
                # An autovacuum worker (a superuser process) is in the database after the
                # 40,000 inserts; FORCE may not terminate it as this role. It finishes soon.
                if attempt == 29:
                    raise
                await asyncio.sleep(1)
            else:
                return
    finally:
        await admin.close()


async def run(
    kind: str, n: int, latency_seconds: float, tmp: Path, profile: bool
) -> dict[str, float]:
    db = await fresh_database()
    tag = uuid.uuid4().hex[:8]
    prefix, exchange = f"bench.{tag}", f"bench.notifications.{tag}"
    env = {
        "DISPATCHER_DATABASE_URL": dsn(db, "postgresql+asyncpg"),
        "DISPATCHER_API__PORT": "0",  # the API on a free port: never a clash on 8080
        "DISPATCHER_AMQP_URL": AMQP,
        "DISPATCHER_EXCHANGE": exchange,
        "DISPATCHER_QUEUE_PREFIX": prefix,
        "DISPATCHER_CHANNELS__WEBHOOK__ENDPOINTS": json.dumps(
            # A bench-only secret: the dispatcher refuses an endpoint it cannot sign for.
            {
                "safety-monitor": {
                    "url": "https://example.org/h",
                    "secrets": ["whsec_" + "A" * 32],
                }
            }
        ),
        "DISPATCHER_LOG_LEVEL": "info",
        "BENCH_PG_DSN": dsn(db),
        "BENCH_QUEUE": f"{prefix}.ingest",
    }
    conn = await asyncpg.connect(dsn(db))
    result: dict[str, float] = {}
    try:
        # Declare the topology with the real dispatcher once, then stop it.
        start_consumer("dispatcher", env, tmp / f"{kind}-declare.log").stop()
        async with Publisher(AMQP, exchange) as pub:
            await pub.publish_many(bodies(n), window=512)
        consumer = start_consumer(kind, env, tmp / f"{kind}-drain.log")
        spy = None
        if profile:
            spy = subprocess.Popen(
                [
                    "py-spy",
                    "record",
                    "--pid",
                    str(consumer.proc.pid),
                    "--format",
                    "raw",
                    "-o",
                    str(ROOT / "bench" / "results" / f"{kind}-drain.folded"),
                    "--rate",
                    "250",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        t0, c0 = time.monotonic(), consumer.cpu()
        t1 = await wait_count(conn, n)
        c1 = consumer.cpu()
        if spy:
            spy.send_signal(signal.SIGINT)
            spy.wait(30)
        result["drain_events_per_s"] = n / (t1 - t0)
        result["drain_cpu_ms_per_event"] = (c1 - c0) * 1000 / n
        result["cpu_s_per_10k_events"] = (c1 - c0) * 10_000 / n
        # Live: the publisher runs while the consumer consumes.
        c2, t2 = consumer.cpu(), time.monotonic()
        async with Publisher(AMQP, exchange) as pub:
            await pub.publish_many(bodies(n), window=512)
        t3 = await wait_count(conn, 2 * n)
        result["live_events_per_s"] = n / (t3 - t2)
        result["live_cpu_ms_per_event"] = (consumer.cpu() - c2) * 1000 / n
        # Latency at a fixed rate: publish time stamped in the event, commit time from the row.
        rate, total = 200, int(200 * latency_seconds)
        items = []
        async with Publisher(AMQP, exchange) as pub:
            start = time.monotonic()
            for i in range(total):
                event = make_event(recipients=RECIPIENTS)
                event["data"]["bench_sent_at"] = time.time()
                await pub.publish(json.dumps(event).encode(), "crisis.detected")
                items.append(event["event_id"])
                delay = start + (i + 1) / rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
        await wait_count(conn, 2 * n + total)
        rows = await conn.fetch(
            "SELECT extract(epoch FROM received_at) - (payload->'data'->>'bench_sent_at')::float8 AS lat"
            " FROM events WHERE payload->'data' ? 'bench_sent_at'"
        )
        lat = sorted(r["lat"] * 1000 for r in rows)
        result["latency_p50_ms"] = statistics.median(lat)
        result["latency_p99_ms"] = lat[int(len(lat) * 0.99) - 1]
        result["peak_rss_mb"] = consumer.peak_rss_mb()
        consumer.stop()
    finally:
        await conn.close()
        await drop_database(db)
        await cleanup_broker(prefix, exchange)
    return result


async def cleanup_broker(prefix: str, exchange: str) -> None:
    import aio_pika

    connection = await aio_pika.connect(AMQP)
    channel = await connection.channel()
    for q in (f"{prefix}.ingest", f"{prefix}.ingest.dlq"):
        await channel.queue_delete(q)
    for x in (exchange, f"{prefix}.ingest.dlx"):
        await channel.exchange_delete(x)
    await connection.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--latency-seconds", type=float, default=15.0)
    parser.add_argument(
        "--profile", action="store_true", help="py-spy the drain (needs py-spy)"
    )
    parser.add_argument(
        "--kinds",
        default="dispatcher,naive",
        help="comma-separated consumers to measure (the ratio needs both)",
    )
    args = parser.parse_args()
    results_dir = ROOT / "bench" / "results"
    results_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path("/tmp") / f"dispatcher-bench-{uuid.uuid4().hex[:6]}"
    tmp.mkdir()
    report = {
        "when": datetime.now(UTC).isoformat(),
        "events": args.events,
        "cpus": os.cpu_count(),
    }
    for kind in args.kinds.split(","):
        report[kind] = asyncio.run(
            run(
                kind,
                args.events,
                args.latency_seconds,
                tmp,
                args.profile and kind == "dispatcher",
            )
        )
        print(kind, json.dumps(report[kind], indent=1))
    if "dispatcher" in report and "naive" in report:
        report["drain_ratio"] = (
            report["dispatcher"]["drain_events_per_s"]
            / report["naive"]["drain_events_per_s"]
        )
        print(f"drain ratio {report['drain_ratio']:.2f}")
    out = results_dir / f"ingest-{datetime.now(UTC):%Y%m%d-%H%M%S}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
