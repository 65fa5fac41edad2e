"""What a webhook claim costs PostgreSQL while one endpoint holds a blocked backlog.

An endpoint whose breaker is open (or which is at its in-flight cap) keeps its due rows
while the others flow. This measures one claim for the healthy endpoints, as the worker
makes it, against growing backlogs of one blocked endpoint: the per-endpoint claim the
webhook channel uses (``_CLAIM_LANES``) and the channel-wide claim email and SMS use
(``_CLAIM``, which the webhook channel used before). Each claim runs inside a transaction
that is rolled back, so every repetition sees the same rows.

    source scripts/services.sh
    flock /tmp/dispatcher-bench.lock env PYTHONPATH=$PWD .venv/bin/python \\
        bench/claim_backlog.py --backlogs 0 5000 50000 200000
"""

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
from sqlalchemy.ext.asyncio import create_async_engine

from dispatcher.db.migrate import upgrade
from dispatcher.outbox.claims import _CLAIM, _CLAIM_LANES

ROOT = Path(__file__).resolve().parents[1]
HEALTHY = ("endpoint-a", "endpoint-b", "endpoint-c")
BLOCKED = "endpoint-down"

_SEED = """
    WITH e AS (
        INSERT INTO events (id, schema_version, type, severity, occurred_at, subject_id,
                            payload, digest, delivery_count)
        SELECT gen_random_uuid(), 1, 'crisis.detected', 'low', now(), 'subject-1',
               '{"type": "crisis.detected"}'::jsonb, '\\x00', 1
        FROM generate_series(1, $1)
        RETURNING id
    )
    INSERT INTO deliveries (id, event_id, channel, recipient, priority, next_attempt_at)
    SELECT gen_random_uuid(), id, 'webhook', $2, 3, now() - make_interval(secs => $3)
    FROM e
"""


def admin(sql: str) -> None:
    subprocess.run(
        ["runuser", "-u", "postgres", "--", "psql", "-qAt", "-c", sql],
        check=True,
        capture_output=True,
    )


async def measure(
    conn: asyncpg.Connection, sql: str, args: list[Any], repeat: int
) -> dict[str, float]:
    """Wall time of the statement (median, p90 over ``repeat``), and buffers it touched."""
    times = []
    for _ in range(repeat + 1):
        tx = conn.transaction()
        await tx.start()
        try:
            t0 = time.perf_counter()
            await conn.fetch(sql, *args)
            times.append((time.perf_counter() - t0) * 1000)
        finally:
            await tx.rollback()
    times = times[1:]  # the first one prepares the statement
    tx = conn.transaction()
    await tx.start()
    try:
        plan = await conn.fetchval(
            "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + sql, *args
        )
    finally:
        await tx.rollback()
    top = json.loads(plan)[0]["Plan"]
    return {
        "ms_median": round(statistics.median(times), 3),
        "ms_p90": round(sorted(times)[int(0.9 * (len(times) - 1))], 3),
        "buffers": top["Shared Hit Blocks"] + top["Shared Read Blocks"],
    }


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    base = os.environ["DISPATCHER_DATABASE_URL"]
    name = f"bench_claims_{uuid.uuid4().hex[:8]}"
    admin(f'CREATE DATABASE "{name}" OWNER dispatcher')
    url = base.rsplit("/", 1)[0] + "/" + name
    results: list[dict[str, Any]] = []
    try:
        engine = create_async_engine(url)
        await upgrade(engine)
        await engine.dispose()
        # As the dispatcher connects (db/engine.py): JIT off.
        conn = await asyncpg.connect(
            url.replace("+asyncpg", ""), server_settings={"jit": args.jit}
        )
        seeded = 0
        for endpoint in HEALTHY:
            await conn.execute(_SEED, 20, endpoint, 60.0)
        for backlog in sorted(args.backlogs):
            if backlog > seeded:
                # Older than the healthy endpoints' rows: the backlog built up during
                # the outage, so a channel-wide claim meets it first.
                await conn.execute(_SEED, backlog - seeded, BLOCKED, 3600.0)
                seeded = backlog
            await conn.execute("VACUUM ANALYZE deliveries")
            params = {
                "channel": "webhook",
                "limit": 32,
                "cap": 8,
                "busy_recipients": [],
                "busy_counts": [],
                "blocked": [BLOCKED],
                "max_priority": 4,
                "owner": "bench",
                "lease": 60.0,
            }
            row: dict[str, Any] = {"blocked_backlog": backlog}
            row["per_endpoint"] = await measure(
                conn,
                _CLAIM_LANES.sql,
                _CLAIM_LANES.args(params),
                args.repeat,
            )
            row["channel_wide"] = await measure(
                conn,
                _CLAIM.sql,
                _CLAIM.args(params),
                args.repeat,
            )
            results.append(row)
            print(json.dumps(row), flush=True)
        await conn.close()
    finally:
        admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    return {
        "repeat": args.repeat,
        "jit": args.jit,
        "healthy_rows": 20 * len(HEALTHY),
        "runs": results,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--backlogs", type=int, nargs="+", default=[0, 5_000, 50_000, 200_000]
    )
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument(
        "--jit", choices=("on", "off"), default="off", help="PostgreSQL's jit setting"
    )
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    out = asyncio.run(main_async(args))
    if args.out:
        args.out.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
