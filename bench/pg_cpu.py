"""CPU time of the PostgreSQL backends serving one database, sampled while a run lasts.

Backends are processes of their own; each one's user+system time is read from ``/proc``
(psutil) every ``interval`` seconds while it is connected to the database, and a
backend first seen after the sampling started counts from zero (it started during the
run). What a backend spends after its last sample and before it exits is missed (pooled
connections live for the whole run). The shared processes (WAL writer, checkpointer,
background writer) are not counted: other databases on the machine use them too.
"""

import asyncio
import contextlib

import asyncpg
import psutil
from ingest import dsn


class PgCpu:
    """``start()``, then ``await stop()`` gives the backends' CPU seconds in between
    (``by_type()`` splits them: autovacuum workers run when they run, and add noise)."""

    def __init__(self, database: str, interval: float = 0.2) -> None:
        self._database = database
        self._interval = interval
        self._first: dict[int, float] = {}
        self._last: dict[int, float] = {}
        self._type: dict[int, str] = {}
        self._task: asyncio.Task[None] | None = None

    async def _sample(self, conn: asyncpg.Connection, initial: bool) -> None:
        pids = await conn.fetch(
            "SELECT pid, backend_type FROM pg_stat_activity"
            " WHERE datname = $1 AND pid <> pg_backend_pid()",
            self._database,
        )
        for pid, backend_type in pids:
            self._type[pid] = backend_type
            with contextlib.suppress(psutil.Error):
                t = psutil.Process(pid).cpu_times()
                cpu = float(t.user + t.system)
                self._first.setdefault(pid, cpu if initial else 0.0)
                self._last[pid] = cpu

    async def _run(self, ready: asyncio.Event) -> None:
        conn = await asyncpg.connect(dsn(self._database))
        try:
            await self._sample(conn, initial=True)
            ready.set()
            while True:
                await asyncio.sleep(self._interval)
                await self._sample(conn, initial=False)
        finally:
            await conn.close()

    async def start(self) -> None:
        ready = asyncio.Event()
        self._task = asyncio.create_task(self._run(ready))
        await ready.wait()

    async def stop(self) -> float:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        return sum(self.by_type().values())

    def by_type(self) -> dict[str, float]:
        """CPU seconds per backend type (client backend, autovacuum worker, ...)."""
        out: dict[str, float] = {}
        for pid, last in self._last.items():
            kind = self._type[pid]
            out[kind] = out.get(kind, 0.0) + last - self._first[pid]
        return out
