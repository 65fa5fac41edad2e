"""What PostgreSQL did for one run's database: per statement, per table, WAL and commits.

For ``bench/e2e.py --pg-stats``, against a cluster of its own (the WAL figure is the
whole cluster's) with ``pg_stat_statements`` preloaded and created in the ``postgres``
database::

    initdb ...; pg_ctl ... -o "-c shared_preload_libraries=pg_stat_statements"
    psql -d postgres -c 'CREATE EXTENSION pg_stat_statements'
    DISPATCHER_DATABASE_URL=postgresql+asyncpg://postgres@127.0.0.1:PORT/postgres ...

``start()`` resets the database's statement counters and notes the WAL position and the
tables' counters and sizes; ``stop(events)`` gives everything since, per event. Table
counters (inserts, updates, HOT updates) are flushed by each backend when it goes idle or
exits, so ``stop`` is called once the replicas have stopped.
"""

import json
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import asyncpg
from ingest import dsn

_TABLES = """
    SELECT s.relname, s.n_tup_ins, s.n_tup_upd, s.n_tup_hot_upd, s.n_tup_del,
           pg_relation_size(s.relid) AS heap_bytes,
           pg_indexes_size(s.relid) AS index_bytes,
           coalesce(pg_total_relation_size(c.reltoastrelid), 0) AS toast_bytes,
           (SELECT count(*) FROM pg_index i WHERE i.indrelid = s.relid) AS indexes
    FROM pg_stat_user_tables AS s JOIN pg_class AS c ON c.oid = s.relid
"""

_STATEMENTS = """
    SELECT query, calls, total_exec_time, total_plan_time, rows, shared_blks_hit,
           shared_blks_read, shared_blks_dirtied, shared_blks_written, wal_records,
           wal_fpi, wal_bytes
    FROM pg_stat_statements
    WHERE dbid = (SELECT oid FROM pg_database WHERE datname = $1)
    ORDER BY total_exec_time DESC
"""

#: Transactions committed in the database (``pg_stat_database`` is flushed by each
#: backend when it goes idle, like the table counters).
_COMMITS = "SELECT xact_commit FROM pg_stat_database WHERE datname = $1"


def label(query: str) -> str:
    """A statement's first words, whitespace collapsed."""
    return re.sub(r"\s+", " ", query).strip()[:90]


class PgStats:
    """Counters of one database between ``start()`` and ``stop()``."""

    def __init__(self, database: str, *, enabled: bool = True) -> None:
        self._database = database
        self._enabled = enabled
        self._lsn = ""
        self._commits = 0
        self._tables: dict[str, dict[str, int]] = {}

    async def _tables_now(self) -> dict[str, dict[str, int]]:
        conn = await asyncpg.connect(dsn(self._database))
        try:
            rows = await conn.fetch(_TABLES)
        finally:
            await conn.close()
        return {
            r["relname"]: {k: int(v) for k, v in r.items() if k != "relname"}
            for r in rows
        }

    async def start(self) -> None:
        if not self._enabled:
            return
        admin = await asyncpg.connect(dsn("postgres"))
        try:
            await admin.execute(
                "SELECT pg_stat_statements_reset(0, oid, 0) FROM pg_database"
                " WHERE datname = $1",
                self._database,
            )
            self._lsn = await admin.fetchval("SELECT pg_current_wal_lsn()::text")
            self._commits = await admin.fetchval(_COMMITS, self._database)
        finally:
            await admin.close()
        self._tables = await self._tables_now()

    async def stop(
        self, events: int, before: Sequence[Callable[[], None]] = ()
    ) -> dict[str, Any]:
        """``{"pg_stats": ...}`` per event; ``before`` is called first (stop the
        replicas). Nothing, and nothing called, when not enabled."""
        if not self._enabled:
            return {}
        for call in before:
            call()
        return {"pg_stats": await self._since(events)}

    async def _since(self, events: int) -> dict[str, Any]:
        admin = await asyncpg.connect(dsn("postgres"))
        try:
            wal = await admin.fetchval(
                "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), CAST(CAST($1 AS text) AS pg_lsn))",
                self._lsn,
            )
            statements = await admin.fetch(_STATEMENTS, self._database)
            commits = await admin.fetchval(_COMMITS, self._database)
        finally:
            await admin.close()
        tables = await self._tables_now()
        per_table: dict[str, dict[str, float]] = {}
        for name, after in sorted(tables.items()):
            before = self._tables.get(name, dict.fromkeys(after, 0))
            delta = {k: after[k] - before[k] for k in after if k != "indexes"}
            if not any(delta.values()):
                continue
            per_table[name] = {k: v / events for k, v in delta.items()}
            per_table[name]["indexes"] = after["indexes"]
        return {
            "events": events,
            "wal_bytes_per_event": float(wal) / events,
            "commits_per_event": (commits - self._commits) / events,
            "tables_per_event": per_table,
            "statements_per_event": [
                {
                    "statement": label(r["query"]),
                    "calls": r["calls"] / events,
                    "exec_ms": r["total_exec_time"] / events,
                    "plan_ms": r["total_plan_time"] / events,
                    "rows": r["rows"] / events,
                    "blks_hit": r["shared_blks_hit"] / events,
                    "blks_read": r["shared_blks_read"] / events,
                    "blks_dirtied": r["shared_blks_dirtied"] / events,
                    "wal_bytes": float(r["wal_bytes"]) / events,
                    "wal_fpi": r["wal_fpi"] / events,
                }
                for r in statements
                if r["total_exec_time"] > 0
            ],
        }


#: Short names of the statements that matter, by how they start.
NAMES = {
    "WITH r AS ( SELECT * FROM unnest(CAST($1 AS uuid[]), CAST($2 AS uuid[]), CAST($3 AS text[]": (
        "outcomes (recorder)"
    ),
    "WITH candidates AS": "claim, channel-wide (email, SMS)",
    "WITH RECURSIVE present": "claim, per endpoint (webhook)",
    "WITH deliveries_in AS": "ingest: deliveries + audit (+ fast-path lease)",
    "INSERT INTO events": "ingest: events",
    'SELECT $2 FROM ONLY "public"."deliveries"': "FK check attempts -> deliveries",
    'SELECT $2 FROM ONLY "public"."events"': "FK check deliveries -> events",
    "UPDATE deliveries SET status": "limit: mark delivered",
    "INSERT INTO deliveries": "limit: deliveries",
}


def short(statement: str) -> str:
    return next((v for k, v in NAMES.items() if statement.startswith(k)), "")


def markdown(path: str) -> str:
    """Per statement and per table figures of every run in an e2e report."""
    out = []
    for run in json.loads(Path(path).read_text())["runs"]:
        stats = run.get("pg_stats")
        if not stats:
            continue
        out.append(
            f"{run['scenario']} (repeat {run.get('repeat')}), "
            f"WAL {stats['wal_bytes_per_event']:.0f} B/event, "
            f"commits {stats.get('commits_per_event', 0):.2f}/event"
        )
        out.append(
            "| statement | calls | ms | rows | ms/call | rows/call | hit | dirtied | WAL B |"
        )
        for s in stats["statements_per_event"]:
            name = short(s["statement"])
            if name:
                out.append(
                    f"| {name} | {s['calls']:.3f} | {s['exec_ms']:.3f} | {s['rows']:.2f}"
                    f" | {s['exec_ms'] / s['calls']:.3f} | {s['rows'] / s['calls']:.1f}"
                    f" | {s['blks_hit']:.1f} | {s['blks_dirtied']:.3f} | {s['wal_bytes']:.0f} |"
                )
        out.append("| table | ins | upd | hot | heap B | index B | indexes |")
        for t, v in stats["tables_per_event"].items():
            out.append(
                f"| {t} | {v['n_tup_ins']:.2f} | {v['n_tup_upd']:.2f} | {v['n_tup_hot_upd']:.2f}"
                f" | {v['heap_bytes']:.0f} | {v['index_bytes']:.0f} | {v['indexes']:.0f} |"
            )
    return "\n".join(out)


if __name__ == "__main__":
    import sys

    for p in sys.argv[1:]:
        print(markdown(p))
