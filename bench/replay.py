"""Dead-letter replay throughput: 100,000 dead deliveries brought back.

Seeds a fresh database at head with ``--dead`` events of one dead delivery each (email,
SMS and webhook in turn, dead with error class ``connection``, marked mirrored so the
mirror's sweep stays out of it) by ``INSERT ... SELECT generate_series`` inside
PostgreSQL. Then, each on a fresh copy of that seed:

- ``requeue-only``: the replay runner alone (in this process, rate 0, no workers): how fast
  the requeue statements bring the set back, and what they cost PostgreSQL (CPU seconds
  of its backends for this database, statements, mean statement time);
- ``unthrottled`` and ``default-rate``: a real ``dispatcher worker`` (channel workers and
  their replay runner, which drives the replay as in production) sending to the local
  sinks (bench/sinks.py, a process of their own): replayed/s (requeued) and delivered/s,
  measured from the replay's own counters. The default rate (10 a second) would take
  100,000 / 10 = 10,000 s (2 h 47 min) for the whole set, so ``--prefix-seconds`` of it
  are measured.

Every run also reports the time to freeze the set (``replays.create``: the replay row
and its ``replay_items``, in one transaction).

    source scripts/services.sh
    flock /tmp/dispatcher-bench.lock env PYTHONPATH=$PWD .venv/bin/python \\
        bench/replay.py --dead 100000 --out bench/results/replay.json
"""

import argparse
import asyncio
import json
import os
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import psutil
import yaml
from e2e import AMQP, ROOT, SinkControl, dispatcher_config, free_port
from ingest import drop_database, dsn, fresh_database
from proc import Proc

from dispatcher.db.engine import create_engine
from dispatcher.delivery.replayer import ReplayRunner
from dispatcher.outbox import dead, replays, requeue
from dispatcher.outbox.dead import DeadFilter

_SEED_EVENTS = """
    INSERT INTO events (id, schema_version, type, severity, occurred_at, received_at,
                        subject_id, payload, digest, delivery_count)
    SELECT md5('e' || i)::uuid, 1, 'crisis.detected', 'high', t.at, t.at,
           'subject-' || i,
           jsonb_build_object('event_id', md5('e' || i)::uuid, 'type', 'crisis.detected',
                              'severity', 'high', 'occurred_at', to_jsonb(t.at),
                              'subject', jsonb_build_object('id', 'subject-' || i),
                              'data', jsonb_build_object('score', i % 100)),
           sha256(('e' || i)::bytea), 1
    FROM generate_series(1, $1) AS i,
         LATERAL (SELECT now() - interval '2 hours' + i * interval '50 ms' AS at) AS t
"""

_SEED_DELIVERIES = """
    INSERT INTO deliveries (id, event_id, channel, recipient, rule, status, priority,
                            attempts, next_attempt_at, last_error_class,
                            last_error_message, last_provider, created_at, updated_at,
                            dead_at, mirrored_at)
    SELECT md5('d' || i)::uuid, md5('e' || i)::uuid, c.channel,
           CASE c.channel WHEN 'email' THEN 'person' || i || '@example.org'
                          WHEN 'sms' THEN '+4477009' || lpad((i % 100000)::text, 5, '0')
                          ELSE 'safety-monitor' END,
           'rule-' || c.channel, 'dead', 1, 8, e.occurred_at, 'connection',
           'connection refused', c.provider, e.occurred_at, e.occurred_at,
           e.occurred_at + interval '10 s', e.occurred_at + interval '10 s'
    FROM generate_series(1, $1) AS i
    JOIN events AS e ON e.id = md5('e' || i)::uuid
    CROSS JOIN LATERAL (
        SELECT (ARRAY['email', 'sms', 'webhook'])[1 + i % 3] AS channel,
               (ARRAY['relay-1', 'twilio-1', 'safety-monitor'])[1 + i % 3] AS provider
    ) AS c
"""

_COUNTERS = "SELECT requeued, delivered, failed_again, skipped, total FROM replays"


async def seed(name: str, n: int) -> dict[str, float]:
    conn = await asyncpg.connect(dsn(name))
    try:
        await conn.execute("SET synchronous_commit = off")
        t0 = time.perf_counter()
        await conn.execute(_SEED_EVENTS, n)
        await conn.execute(_SEED_DELIVERIES, n)
        seeded = time.perf_counter() - t0
        await conn.execute("VACUUM ANALYZE events")
        await conn.execute("VACUUM ANALYZE deliveries")
    finally:
        await conn.close()
    return {"seconds": round(seeded, 1)}


async def freeze(name: str, rate: float) -> dict[str, Any]:
    """Create the replay of every dead letter; the seconds it took and its count."""
    conn = await asyncpg.connect(dsn(name))
    try:
        t0 = time.perf_counter()
        async with conn.transaction():
            _, total = await replays.create(
                conn,
                DeadFilter(error_classes=("connection",)),
                as_of=await dead.now(conn),
                by="bench",
                reason="bench",
                rate=rate,
                max_age_seconds=None,
            )
        return {"freeze_seconds": round(time.perf_counter() - t0, 2), "total": total}
    finally:
        await conn.close()


def backends_cpu(name: str) -> float:
    """CPU seconds of the PostgreSQL backends connected to database ``name``."""
    total = 0.0
    for p in psutil.process_iter(["name", "cmdline"]):
        title = " ".join(p.info["cmdline"] or [])
        if p.info["name"] == "postgres" and f" {name} " in f" {title} ":
            try:
                t = p.cpu_times()
            except psutil.NoSuchProcess:
                continue
            total += t.user + t.system
    return total


async def watch(
    name: str, until: Callable[[Any], bool], limit: float
) -> tuple[dict[str, float], Any]:
    """Poll the replay's counters until ``until(row)`` or ``limit`` seconds; when the
    requeue and the deliveries finished, from the first poll."""
    conn = await asyncpg.connect(dsn(name))
    try:
        t0 = time.perf_counter()
        marks: dict[str, float] = {}
        while True:
            row = await conn.fetchrow(_COUNTERS)
            now = time.perf_counter() - t0
            if row["requeued"] + row["skipped"] >= row["total"]:
                marks.setdefault("requeued_at", now)
            if row["delivered"] + row["failed_again"] >= row["total"]:
                marks.setdefault("delivered_at", now)
            if until(row) or now >= limit:
                marks["elapsed"] = now
                return marks, row
            await asyncio.sleep(0.5)
    finally:
        await conn.close()


async def requeue_only(name: str, n: int) -> dict[str, Any]:
    """The runner alone, unthrottled, no workers: the replay's own PostgreSQL cost."""
    out = await freeze(name, rate=0.0)
    timings: list[float] = []
    step = requeue.requeue

    async def timed(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return await step(*args, **kwargs)
        finally:
            timings.append(time.perf_counter() - t0)

    requeue.requeue = timed  # bench: time each statement
    engine = create_engine(dsn(name, "postgresql+asyncpg"), pool_size=2)
    runner = ReplayRunner(engine, owner="bench")
    cpu0, own0 = backends_cpu(name), time.process_time()
    await runner.start()
    try:
        marks, row = await watch(name, lambda r: r["requeued"] >= n, 3600)
        # Before the runner lets go: its backend's CPU goes with its connection.
        pg_cpu = backends_cpu(name) - cpu0
    finally:
        await runner.stop()
        requeue.requeue = step
        await engine.dispose()
    return {
        **out,
        "requeued": row["requeued"],
        "seconds": round(marks["elapsed"], 1),
        "replayed_per_s": round(row["requeued"] / marks["elapsed"]),
        "requeue_statements": len(timings),
        "requeue_statement_ms_mean": round(1000 * sum(timings) / len(timings), 1),
        "postgres_cpu_seconds": round(pg_cpu, 1),
        "postgres_cpu_ms_per_1000_requeued": round(
            1000 * pg_cpu / row["requeued"] * 1000
        ),
        "runner_process_cpu_seconds": round(time.process_time() - own0, 1),
    }


async def with_worker(
    name: str, rate: float, limit: float, ports: dict[str, int], tmp: Path
) -> dict[str, Any]:
    """A real `dispatcher worker` drives the replay and delivers to the sinks."""
    tag = uuid.uuid4().hex[:8]
    config = tmp / f"config-{tag}.yaml"
    config.write_text(yaml.safe_dump(dispatcher_config(ports)))
    env = {
        "DISPATCHER_DATABASE_URL": dsn(name, "postgresql+asyncpg"),
        "DISPATCHER_AMQP_URL": AMQP,
        "DISPATCHER_EXCHANGE": f"bench.notifications.{tag}",
        "DISPATCHER_QUEUE_PREFIX": f"bench.{tag}",
        "DISPATCHER_CONFIG": str(config),
        "OTEL_SDK_DISABLED": "true",
        "PYTHONPATH": str(ROOT),
    }
    worker = Proc(
        [sys.executable, "-m", "dispatcher", "worker"],
        env,
        tmp / f"worker-{tag}.log",
        "dispatcher.serving",
    )
    try:
        worker.wait_ready(60)
        out = await freeze(name, rate)
        cpu0, worker0 = backends_cpu(name), worker.cpu()
        marks, row = await watch(
            name, lambda r: r["delivered"] + r["failed_again"] >= r["total"], limit
        )
        pg_cpu, worker_cpu = backends_cpu(name) - cpu0, worker.cpu() - worker0
    finally:
        worker.stop()
    elapsed = marks["elapsed"]
    requeued_at = marks.get("requeued_at", elapsed)
    delivered_at = marks.get("delivered_at", elapsed)
    return {
        **out,
        "rate": rate,
        "measured_seconds": round(elapsed, 1),
        "requeued": row["requeued"],
        "delivered": row["delivered"],
        "failed_again": row["failed_again"],
        "replayed_per_s": round(row["requeued"] / requeued_at, 1),
        "delivered_per_s": round(row["delivered"] / delivered_at, 1),
        "all_requeued_after_s": marks.get("requeued_at"),
        "all_delivered_after_s": marks.get("delivered_at"),
        "postgres_cpu_seconds": round(pg_cpu, 1),
        "worker_cpu_seconds": round(worker_cpu, 1),
    }


async def on_fresh_seed(
    n: int, run: Callable[[str], Awaitable[dict[str, Any]]]
) -> dict[str, Any]:
    name = await fresh_database()
    try:
        seeded = await seed(name, n)
        print(f"seeded {n} dead letters: {seeded}", file=sys.stderr, flush=True)
        return {"seeding": seeded, **await run(name)}
    finally:
        await drop_database(name)


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "load_average_before": os.getloadavg(),
        "dead": args.dead,
        "default_rate": replays.DEFAULT_RATE,
        "command": " ".join(sys.argv),
    }
    tmp = Path("/tmp") / f"dispatcher-replay-{uuid.uuid4().hex[:6]}"
    tmp.mkdir()
    ports = {c: free_port() for c in ("smtp", "sms", "webhook", "control")}
    sinks = Proc(
        [sys.executable, str(ROOT / "bench" / "sinks.py")]
        + [f"--{c}-port={p}" for c, p in ports.items()],
        {"PYTHONPATH": str(ROOT)},
        tmp / "sinks.log",
        "sinks.ready",
    )
    control = SinkControl(ports["control"])
    try:
        sinks.wait_ready()
        n = args.dead
        runs = {
            "requeue-only": lambda name: requeue_only(name, n),
            "unthrottled": lambda name: with_worker(name, 0.0, 3600, ports, tmp),
            "default-rate": lambda name: with_worker(
                name, replays.DEFAULT_RATE, args.prefix_seconds, ports, tmp
            ),
        }
        for label, run in runs.items():
            if args.only and label not in args.only:
                continue
            out[label] = await on_fresh_seed(n, run)
            print(f"{label}: {json.dumps(out[label])}", file=sys.stderr, flush=True)
        out["sinks_received"] = await control.get("/count")
    finally:
        await control.http.close()
        sinks.stop()
    out["load_average_after"] = os.getloadavg()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--dead", type=int, default=100_000)
    parser.add_argument(
        "--prefix-seconds",
        type=float,
        default=60.0,
        help="how long the default-rate run is measured",
    )
    parser.add_argument(
        "--only", action="append", help="requeue-only, unthrottled or default-rate"
    )
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    out = asyncio.run(main_async(args))
    if args.out:
        args.out.write_text(json.dumps(out, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
