"""The audit API's list, detail and count queries at one million events.

Seeds a fresh database at head with ``--events`` events (three deliveries each: one email,
one SMS, one webhook; mostly delivered, some dead, some pending; their attempt rows; one
audit entry per event and per dead letter; some rejected messages), each table by one
``INSERT ... SELECT generate_series`` inside PostgreSQL, with the secondary indexes of the
migrations dropped during the load and rebuilt after it. Then it serves the real API
(``create_app`` under uvicorn on a free port), requests every list and detail route with
typical filters ``--repeat`` times and reports p50/p99 per request, times the SQL each
route ran on its own, and runs ``EXPLAIN`` on that SQL: a Seq Scan on events, deliveries
or delivery_attempts is a failure.

    source scripts/services.sh
    flock /tmp/dispatcher-bench.lock env PYTHONPATH=$PWD .venv/bin/python \\
        bench/api_queries.py --events 1000000 --out bench/results/api-queries.json

``--keep`` keeps the seeded database and ``--database NAME`` reuses it (after
``dispatcher migrate`` against it, to measure a new index without seeding again).
"""

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from ingest import drop_database, dsn, fresh_database
from sqlalchemy import event
from sqlalchemy.engine import Engine

from dispatcher.api.app import create_app
from dispatcher.api.auth import hash_token, new_token
from dispatcher.api.server import ApiServer
from dispatcher.db.engine import create_engine
from dispatcher.db.migrate import upgrade
from dispatcher.events.blind_index import recipient_digest
from dispatcher.events.kinds import ChannelKind, Severity
from dispatcher.settings import Settings

AMQP = os.environ.get("DISPATCHER_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
RECIPIENT_KEY = "bench-recipient-hash-key-0123456789"
PEOPLE = 10_000
SUBJECTS = 50_000
ENDPOINTS = ("safety-monitor", "ops-hook", "case-system", "pager-bridge")
TYPES = (
    "crisis.detected",
    "crisis.escalated",
    "crisis.resolved",
    "wellbeing.checkin",
    "system.heartbeat",
)
#: The seeded events span this much time before the start of the run, oldest first.
SPAN = timedelta(days=7)
#: The newest events' deliveries are still pending (the live backlog).
BACKLOG_EVENTS = 2_000
BIG_TABLES = ("events", "deliveries", "delivery_attempts")
#: In the order of the seeding SQL's severity CASE.
SEVERITIES = ("critical", "high", "medium", "low", "info")

# --- seeding ------------------------------------------------------------------------

#: A well-mixed 32-bit hash of an integer (Knuth's multiplicative hash), in SQL.
_H = "(({n})::bigint * 2654435761 % 4294967296)"
_SEVERITY = (
    "CASE WHEN {h} % 100 < 5 THEN 'critical' WHEN {h} % 100 < 20 THEN 'high' "
    "WHEN {h} % 100 < 50 THEN 'medium' WHEN {h} % 100 < 80 THEN 'low' ELSE 'info' END"
)
_RECEIVED = "$2::timestamptz - ($1 - {i}) * $3::interval"

_EVENTS = f"""
    INSERT INTO events (id, schema_version, type, severity, occurred_at, received_at,
                        subject_id, correlation_id, payload, digest, delivery_count)
    SELECT md5('e' || i)::uuid, 1, t.type, t.severity,
           t.received - interval '1.5 s', t.received,
           'subject-' || ({_H.format(n="i")} / 1000) % {SUBJECTS}, 'corr-' || i / 4,
           jsonb_build_object('type', t.type, 'data',
                              jsonb_build_object('note', 'bench', 'score', i % 100)),
           sha256(('e' || i)::bytea), 3
    FROM generate_series(1, $1) AS i,
         LATERAL (SELECT ($4::text[])[1 + ({_H.format(n="i")} / 100) % 5] AS type,
                         {_SEVERITY.format(h=_H.format(n="i"))} AS severity,
                         {_RECEIVED.format(i="i")} AS received) AS t
"""

_DELIVERIES = f"""
    INSERT INTO deliveries (id, event_id, channel, recipient, recipient_hash, rule,
                            status, priority, attempts, next_attempt_at, last_error_class,
                            last_error_message, last_provider, created_at, updated_at,
                            delivered_at, dead_at)
    SELECT md5('d' || i || '-' || c.k)::uuid, md5('e' || i)::uuid, c.channel,
           CASE c.channel WHEN 'email' THEN 'person' || p.person || '@example.org'
                          WHEN 'sms' THEN '+4477009' || lpad(p.person::text, 5, '0')
                          ELSE ($7::text[])[1 + p.person % 4] END,
           CASE c.channel WHEN 'email' THEN ($4::bytea[])[1 + p.person]
                          WHEN 'sms' THEN ($5::bytea[])[1 + p.person] END,
           'rule-' || c.channel, s.status,
           ($6::int[])[1 + ({_H.format(n="i")} % 100 >= 5)::int
                          + ({_H.format(n="i")} % 100 >= 20)::int
                          + ({_H.format(n="i")} % 100 >= 50)::int
                          + ({_H.format(n="i")} % 100 >= 80)::int],
           s.attempts,
           CASE WHEN s.status = 'pending' THEN $2::timestamptz + (h % 10) * interval '30 s'
                ELSE s.created END,
           CASE WHEN s.status = 'dead' OR (s.status = 'pending' AND s.attempts > 0)
                THEN ($8::text[])[1 + h % 3] END,
           CASE WHEN s.status = 'dead' OR (s.status = 'pending' AND s.attempts > 0)
                THEN 'bench failure' END,
           CASE WHEN s.attempts > 0 THEN c.provider END,
           s.created, s.created + s.attempts * interval '2 s',
           CASE WHEN s.status = 'delivered' THEN s.created + s.attempts * interval '2 s' END,
           CASE WHEN s.status = 'dead' THEN s.created + s.attempts * interval '2 s' END
    FROM generate_series(1, $1) AS i
    CROSS JOIN (VALUES (1, 'email', 'smtp-relay'), (2, 'sms', 'twilio'),
                       (3, 'webhook', 'webhook')) AS c(k, channel, provider)
    CROSS JOIN LATERAL (SELECT {_H.format(n="i * 3 + c.k")} AS h) AS hh
    CROSS JOIN LATERAL (SELECT (h / 7) % {PEOPLE} AS person) AS p
    CROSS JOIN LATERAL (
        SELECT st.status,
               CASE st.status WHEN 'delivered' THEN 1 + (h % 100 < 10)::int
                                                  + (h % 100 < 3)::int
                              WHEN 'dead' THEN 5
                              ELSE (h % 3)::int END AS attempts,
               {_RECEIVED.format(i="i")} + interval '5 ms' AS created
        FROM (SELECT CASE WHEN i > $1 - {BACKLOG_EVENTS} THEN 'pending'
                          WHEN h % 1000 < 30 THEN 'dead'
                          WHEN h % 1000 < 40 THEN 'pending'
                          ELSE 'delivered' END AS status) AS st
    ) AS s
"""

_ATTEMPTS = """
    INSERT INTO delivery_attempts (delivery_id, attempt, provider, started_at, finished_at,
                                   outcome, error_class, error_message, provider_code,
                                   latency_ms, lineage)
    SELECT d.id, a, d.last_provider,
           d.created_at + (a - 1) * interval '2 s',
           d.created_at + (a - 1) * interval '2 s' + interval '150 ms',
           CASE WHEN d.status = 'delivered' AND a = d.attempts THEN 'delivered'
                ELSE 'failed' END,
           CASE WHEN d.status = 'delivered' AND a = d.attempts THEN NULL
                ELSE coalesce(d.last_error_class, 'timeout') END,
           CASE WHEN d.status = 'delivered' AND a = d.attempts THEN NULL
                ELSE 'bench failure' END,
           CASE WHEN d.status = 'delivered' AND a = d.attempts THEN '250' ELSE '451' END,
           150.0, CASE WHEN a = 1 THEN 'initial' ELSE 'retry' END
    FROM deliveries AS d CROSS JOIN LATERAL generate_series(1, d.attempts) AS a
"""

_AUDIT_RECEIVED = """
    INSERT INTO audit_log (at, kind, event_id, detail)
    SELECT received_at, 'event.received', id, '{"deliveries": 3}'::jsonb FROM events
"""

_AUDIT_DEAD = """
    INSERT INTO audit_log (at, kind, event_id, delivery_id, detail)
    SELECT dead_at, 'delivery.dead_lettered', event_id, id, '{}'::jsonb
    FROM deliveries WHERE status = 'dead'
"""

_REJECTED = """
    INSERT INTO rejected_messages (received_at, source, reason, message, body, body_size)
    SELECT $2::timestamptz - ($1 - i) * $3::interval, 'amqp',
           (ARRAY['not_json', 'missing_field', 'too_large'])[1 + i % 3],
           'bench rejection', '\\x7b7d'::bytea, 2
    FROM generate_series(1, $1) AS i
"""

_SECONDARY_INDEXES = """
    SELECT i.indexname, i.indexdef FROM pg_indexes AS i
    WHERE i.schemaname = 'public' AND i.tablename = ANY($1::text[])
      AND NOT EXISTS (SELECT 1 FROM pg_constraint AS c WHERE c.conname = i.indexname)
"""

SEEDED = (
    "events",
    "deliveries",
    "delivery_attempts",
    "audit_log",
    "rejected_messages",
)


async def seed(conn: asyncpg.Connection, n: int, start: datetime) -> dict[str, Any]:
    """Fill the tables; the seconds each step took and the rows it wrote."""
    key = RECIPIENT_KEY.encode()
    emails = [
        recipient_digest(key, ChannelKind.EMAIL, f"person{p}@example.org")
        for p in range(PEOPLE)
    ]
    phones = [
        recipient_digest(key, ChannelKind.SMS, f"+4477009{p:05d}")
        for p in range(PEOPLE)
    ]
    priorities = [Severity(s).priority for s in SEVERITIES]
    step = SPAN / n
    await conn.execute("SET synchronous_commit = off")
    await conn.execute("SET maintenance_work_mem = '256MB'")
    indexes = await conn.fetch(_SECONDARY_INDEXES, list(SEEDED))
    steps: dict[str, Any] = {}
    t_all = time.perf_counter()
    for row in indexes:
        await conn.execute(f'DROP INDEX "{row["indexname"]}"')
    timed = [
        ("events", _EVENTS, (n, start, step, list(TYPES))),
        (
            "deliveries",
            _DELIVERIES,
            (
                n,
                start,
                step,
                emails,
                phones,
                priorities,
                list(ENDPOINTS),
                ["timeout", "connection", "provider_permanent"],
            ),
        ),
        ("delivery_attempts", _ATTEMPTS, ()),
        ("audit_log (received)", _AUDIT_RECEIVED, ()),
        ("audit_log (dead)", _AUDIT_DEAD, ()),
        ("rejected_messages", _REJECTED, (max(n // 50, 1), start, step * 50)),
    ]
    for name, sql, args in timed:
        t0 = time.perf_counter()
        status = await conn.execute(sql, *args)
        steps[name] = {
            "rows": int(status.split()[-1]),
            "seconds": round(time.perf_counter() - t0, 1),
        }
        print(f"seeded {name}: {steps[name]}", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    for row in indexes:
        await conn.execute(row["indexdef"])
    steps["secondary indexes"] = {
        "count": len(indexes),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    t0 = time.perf_counter()
    for table in SEEDED:
        await conn.execute(f"VACUUM ANALYZE {table}")
    steps["vacuum analyze"] = {"seconds": round(time.perf_counter() - t0, 1)}
    steps["total_seconds"] = round(time.perf_counter() - t_all, 1)
    return steps


# --- measuring ----------------------------------------------------------------------

Params = dict[str, Any]


@dataclass
class Query:
    """One request, its params for repetition ``k``, and a page to start from."""

    name: str
    path: Callable[[int], str]
    params: Callable[[int], Params] = lambda _: {}
    #: Follow this many pages first and time the next one (a cursor page).
    skip_pages: int = 0
    statements: list[tuple[str, tuple[Any, ...]]] = field(default_factory=list)


class Capture:
    """The SQL the API runs, per request (background snapshot refreshes left out)."""

    def __init__(self) -> None:
        self.sink: list[tuple[str, tuple[Any, ...]]] | None = None
        event.listen(Engine, "before_cursor_execute", self._seen)

    def _seen(
        self,
        _conn: Any,
        _cursor: Any,
        statement: str,
        parameters: Any,
        _context: Any,
        _executemany: bool,
    ) -> None:
        if self.sink is None or "GROUP BY" in statement:
            return
        if statement.lstrip().upper().startswith(("EXPLAIN", "SELECT 1", "BEGIN")):
            return
        self.sink.append((statement, tuple(parameters or ())))

    @contextmanager
    def into(self, sink: list[tuple[str, tuple[Any, ...]]]) -> Iterator[None]:
        self.sink = sink
        try:
            yield
        finally:
            self.sink = None


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(p * len(ordered)))], 2)


async def samples(conn: asyncpg.Connection, n: int) -> dict[str, list[Any]]:
    """Existing values to filter by, spread over the whole table."""
    picks = [1 + (k * 7919) % n for k in range(64)]
    events = await conn.fetch(
        "SELECT id, subject_id, correlation_id, received_at FROM events"
        " WHERE id = ANY(SELECT md5('e' || i)::uuid FROM unnest($1::int[]) AS i)",
        picks,
    )
    deliveries = await conn.fetch(
        "SELECT id FROM deliveries WHERE event_id = ANY($1::uuid[])"
        " AND channel = 'email'",
        [r["id"] for r in events],
    )
    return {
        "event": [str(r["id"]) for r in events],
        "subject": [r["subject_id"] for r in events],
        "correlation": [r["correlation_id"] for r in events],
        "received": [r["received_at"] for r in events],
        "delivery": [str(r["id"]) for r in deliveries],
    }


def queries(s: dict[str, list[Any]]) -> list[Query]:
    def pick(name: str) -> Callable[[int], Any]:
        return lambda k: s[name][k % len(s[name])]

    event_id, subject, corr, delivery = (
        pick("event"),
        pick("subject"),
        pick("correlation"),
        pick("delivery"),
    )

    def window(k: int, prefix: str) -> Params:
        """One hour from a seeded event's receipt."""
        at: datetime = pick("received")(k)
        return {
            f"{prefix}_after": at.isoformat(),
            f"{prefix}_before": (at + timedelta(hours=1)).isoformat(),
        }

    def person(k: int) -> str:
        return f"person{(k * 131) % PEOPLE}@example.org"

    def phone(k: int) -> str:
        return f"+4477009{(k * 131) % PEOPLE:05d}"

    ev, dl = (lambda _: "/v1/events"), (lambda _: "/v1/deliveries")
    return [
        Query("events: newest", ev),
        Query("events: type prefix crisis.*", ev, lambda _: {"type": "crisis.*"}),
        Query("events: type exact", ev, lambda _: {"type": "crisis.escalated"}),
        Query("events: severity critical", ev, lambda _: {"severity": "critical"}),
        Query(
            "events: severity critical+high",
            ev,
            lambda _: {"severity": ["critical", "high"]},
        ),
        Query("events: subject", ev, lambda k: {"subject_id": subject(k)}),
        Query("events: correlation", ev, lambda k: {"correlation_id": corr(k)}),
        Query(
            "events: received in 1 h",
            ev,
            lambda k: window(k, "received"),
        ),
        Query(
            "events: occurred in 1 h, crisis.*",
            ev,
            lambda k: {
                "type": "crisis.*",
                **window(k, "occurred"),
            },
        ),
        Query(
            "events: with a dead delivery", ev, lambda _: {"delivery_status": "dead"}
        ),
        Query(
            "events: critical for subject, not delivered",
            ev,
            lambda k: {
                "subject_id": subject(k),
                "severity": "critical",
                "delivery_status": ["pending", "in_flight", "dead"],
            },
        ),
        Query("events: page 2", ev, skip_pages=1),
        Query("events: page 21, crisis.*", ev, lambda _: {"type": "crisis.*"}, 20),
        Query("event detail", lambda k: f"/v1/events/{event_id(k)}"),
        Query("deliveries: newest", dl),
        Query("deliveries: channel sms", dl, lambda _: {"channel": "sms"}),
        Query("deliveries: status dead", dl, lambda _: {"status": "dead"}),
        Query("deliveries: status pending", dl, lambda _: {"status": "pending"}),
        Query(
            "deliveries: sms dead",
            dl,
            lambda _: {"channel": "sms", "status": "dead"},
        ),
        Query("deliveries: severity critical", dl, lambda _: {"severity": "critical"}),
        Query("deliveries: recipient email", dl, lambda k: {"recipient": person(k)}),
        Query("deliveries: recipient phone", dl, lambda k: {"recipient": phone(k)}),
        Query("deliveries: endpoint", dl, lambda _: {"endpoint": "ops-hook"}),
        Query("deliveries: provider", dl, lambda _: {"provider": "twilio"}),
        Query(
            "deliveries: error class timeout",
            dl,
            lambda _: {"error_class": "timeout"},
        ),
        Query("deliveries: attempts >= 3", dl, lambda _: {"min_attempts": 3}),
        Query("deliveries: of an event", dl, lambda k: {"event_id": event_id(k)}),
        Query(
            "deliveries: created in 1 h",
            dl,
            lambda k: window(k, "created"),
        ),
        Query("deliveries: page 21", dl, skip_pages=20),
        Query("delivery detail", lambda k: f"/v1/deliveries/{delivery(k)}"),
        Query("delivery attempts", lambda k: f"/v1/deliveries/{delivery(k)}/attempts"),
        Query(
            "count: status dead",
            lambda _: "/v1/deliveries/count",
            lambda _: {"status": "dead"},
        ),
        Query(
            "count: sms (estimated)",
            lambda _: "/v1/deliveries/count",
            lambda _: {"channel": "sms"},
        ),
        Query(
            "count: recipient",
            lambda _: "/v1/deliveries/count",
            lambda k: {"recipient": person(k)},
        ),
        Query("audit: newest", lambda _: "/v1/audit"),
        Query(
            "audit: dead letters",
            lambda _: "/v1/audit",
            lambda _: {"kind": "delivery.dead_lettered"},
        ),
        Query(
            "audit: of an event",
            lambda _: "/v1/audit",
            lambda k: {"event_id": event_id(k)},
        ),
        Query("rejected: newest", lambda _: "/v1/rejected"),
        Query(
            "rejected: reason",
            lambda _: "/v1/rejected",
            lambda _: {"reason": "too_large"},
        ),
        Query("channels (snapshot)", lambda _: "/v1/channels"),
    ]


async def request(client: httpx.AsyncClient, q: Query, k: int) -> Params:
    """The params of repetition ``k``, with the cursor of the page it starts from."""
    params = q.params(k)
    for _ in range(q.skip_pages):
        body = await get(client, q.path(k), params)
        params = {**q.params(k), "cursor": body["iterator"]}
    return params


async def get(client: httpx.AsyncClient, path: str, params: Params) -> Any:
    response = await client.get(path, params=params)
    if response.status_code != 200:
        raise RuntimeError(f"{path} {params}: {response.status_code} {response.text}")
    return response.json()


def scans(plan: dict[str, Any]) -> Iterator[tuple[str, str | None, str | None]]:
    """(node type, relation, index) of every node of a plan."""
    yield plan["Node Type"], plan.get("Relation Name"), plan.get("Index Name")
    for child in plan.get("Plans", []):
        yield from scans(child)


async def explain(
    conn: asyncpg.Connection, statements: list[tuple[str, tuple[Any, ...]]], repeat: int
) -> dict[str, Any]:
    """Indexes used, Seq Scans on the big tables, and the SQL's own time per request."""
    indexes: set[str] = set()
    seq: set[str] = set()
    for sql, args in statements:
        plan = json.loads(await conn.fetchval("EXPLAIN (FORMAT JSON) " + sql, *args))
        for node, relation, index in scans(plan[0]["Plan"]):
            if index:
                indexes.add(index)
            if node == "Seq Scan" and relation:
                seq.add(relation)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        for sql, args in statements:
            await conn.fetch(sql, *args)
        times.append((time.perf_counter() - t0) * 1000)
    return {
        "sql_p50_ms": pct(times, 0.5),
        "sql_p99_ms": pct(times, 0.99),
        "indexes": sorted(indexes),
        "seq_scans": sorted(seq),
        "seq_scan_on_big_table": sorted(seq & set(BIG_TABLES)),
    }


async def measure(database: str, repeat: int) -> list[dict[str, Any]]:
    token = new_token()
    settings = Settings(
        database_url=dsn(database, "postgresql+asyncpg"),
        amqp_url=AMQP,
        api={
            "port": 0,
            "tokens": [
                {"name": "bench", "sha256": hash_token(token), "scopes": ["audit:read"]}
            ],
            "recipient_hash_key": RECIPIENT_KEY,
            "limits": {
                "rate_per_second": 100_000,
                "burst": 1_000_000,
                "snapshot_interval": 3600,
            },
        },
    )
    capture = Capture()
    server = ApiServer(create_app(settings), settings.api)
    await server.start()
    results = []
    conn = await asyncpg.connect(dsn(database), server_settings={"jit": "off"})
    try:
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{server.port}",
            headers={"Authorization": f"Bearer {token}"},
            timeout=60,
        ) as client:
            for q in queries(await samples(conn, await n_events(conn))):
                times = []
                for k in range(-3, repeat):
                    params = await request(client, q, k)
                    sink: list[tuple[str, tuple[Any, ...]]] = []
                    t0 = time.perf_counter()
                    with capture.into(sink):
                        await get(client, q.path(k), params)
                    if k >= 0:
                        times.append((time.perf_counter() - t0) * 1000)
                    if k == 0:
                        q.statements = sink
                row = {
                    "query": q.name,
                    "p50_ms": pct(times, 0.5),
                    "p99_ms": pct(times, 0.99),
                    **await explain(conn, q.statements, repeat),
                }
                results.append(row)
                print(json.dumps(row), flush=True)
    finally:
        await conn.close()
        await server.stop()
    return results


async def n_events(conn: asyncpg.Connection) -> int:
    return int(await conn.fetchval("SELECT count(*) FROM events"))


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "load_average_before": os.getloadavg(),
        "repeat": args.repeat,
    }
    name = args.database or await fresh_database()
    try:
        if args.database:
            engine = create_engine(dsn(name, "postgresql+asyncpg"), pool_size=1)
            await upgrade(engine)
            await engine.dispose()
        else:
            conn = await asyncpg.connect(dsn(name))
            try:
                out["seeding"] = await seed(conn, args.events, datetime.now(UTC))
            finally:
                await conn.close()
            print(json.dumps(out["seeding"]), file=sys.stderr, flush=True)
        out["queries"] = await measure(name, args.repeat)
    finally:
        if args.keep or args.database:
            print(f"kept database {name}", file=sys.stderr)
        else:
            await drop_database(name)
    out["load_average_after"] = os.getloadavg()
    slow = [r["query"] for r in out["queries"] if r["p99_ms"] >= args.target_ms]
    seq = [r["query"] for r in out["queries"] if r["seq_scan_on_big_table"]]
    out["over_target"], out["seq_scans"] = slow, seq
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=200)
    parser.add_argument("--target-ms", type=float, default=20.0)
    parser.add_argument("--database", help="reuse this seeded database (not dropped)")
    parser.add_argument("--keep", action="store_true", help="keep the seeded database")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    out = asyncio.run(main_async(args))
    if args.out:
        args.out.write_text(json.dumps(out, indent=2, default=str) + "\n")
    print(
        f"over {args.target_ms} ms p99: {out['over_target'] or 'none'}; "
        f"Seq Scan on a big table: {out['seq_scans'] or 'none'}",
        file=sys.stderr,
    )
    if out["seq_scans"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
