"""The state of every channel, provider and webhook endpoint, refreshed in the background.

``GET /v1/channels`` and ``/metrics`` read the latest snapshot, so a flood of requests
costs the database nothing; the aggregates run once per ``api.limits.snapshot_interval``
while someone reads them, and not at all in a replica nobody asks (``IDLE_AFTER``).
"""

import asyncio
import contextlib
import math
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import structlog
from pydantic import BaseModel, Field
from sqlalchemy.ext.asyncio import AsyncEngine

from dispatcher.api import queries
from dispatcher.db.engine import wrap_db_errors
from dispatcher.errors import StorageUnavailable
from dispatcher.events.kinds import Severity
from dispatcher.health import Readiness
from dispatcher.outbox.status import breaker_status

log = structlog.get_logger("dispatcher.api")

_SEVERITY_BY_PRIORITY = {s.priority: s.value for s in Severity}
#: Attempts younger than this make up the recent success rate.
RECENT_WINDOW_SECONDS = 300.0
#: Seconds without a read after which the background refreshes stop; the next read
#: refreshes first. Longer than any usual Prometheus scrape interval, so a scraped
#: replica keeps its steady refresh (and ``dispatcher_ready``) as before.
IDLE_AFTER = 120.0


class BreakerView(BaseModel):
    replica: str
    state: str = Field(description="closed, open or half_open")
    since: datetime
    reason: str


class ProviderView(BaseModel):
    """One provider (email relay, SMS account) or webhook endpoint."""

    name: str
    attempts_recent: int
    success_rate: float | None = Field(
        description="Delivered / attempts in the recent window; null without attempts."
    )
    last_error_class: str | None
    due: int = Field(description="Due deliveries (webhook endpoints only).")
    oldest_due_age_seconds: float | None
    breakers: list[BreakerView] = Field(
        description="Latest transition per replica; none means closed since start."
    )


class SeverityBacklog(BaseModel):
    severity: str
    due: int
    oldest_due_age_seconds: float | None


class ChannelView(BaseModel):
    channel: str
    due: int
    oldest_due_age_seconds: float | None
    due_by_severity: list[SeverityBacklog] = Field(
        default_factory=list,
        description="Due deliveries per severity, most urgent first.",
    )
    in_flight: int
    dead_letters: int
    providers: list[ProviderView]


class ChannelsSnapshot(BaseModel):
    refreshed_at: datetime | None = Field(description="Null until the first refresh.")
    recent_window_seconds: float
    channels: list[ChannelView]


EMPTY = ChannelsSnapshot(
    refreshed_at=None, recent_window_seconds=RECENT_WINDOW_SECONDS, channels=[]
)


async def take_snapshot(engine: AsyncEngine) -> ChannelsSnapshot:
    with wrap_db_errors():
        async with engine.connect() as conn:
            backlog = await queries.channel_backlog(conn)
            by_priority = await queries.due_by_priority(conn)
            dead = await queries.dead_letters(conn)
            recent = await queries.recent_attempts(conn, RECENT_WINDOW_SECONDS)
            breakers = await breaker_status(conn)
    now = datetime.now(UTC)
    channels: dict[str, dict[str, Any]] = {}
    providers: dict[tuple[str, str], dict[str, Any]] = {}

    def channel(name: str) -> dict[str, Any]:
        return channels.setdefault(
            name,
            {"due": 0, "oldest": None, "in_flight": 0, "dead": 0},
        )

    def provider(ch: str, name: str) -> dict[str, Any]:
        channel(ch)
        return providers.setdefault(
            (ch, name),
            {
                "attempts": 0,
                "delivered": 0,
                "last_error": None,
                "due": 0,
                "oldest": None,
                "breakers": [],
            },
        )

    for row in backlog:
        c = channel(row.channel)
        c["due"] += row.due
        c["in_flight"] += row.in_flight
        c["oldest"] = _earliest(c["oldest"], row.oldest_due)
        if row.endpoint is not None:
            p = provider(row.channel, row.endpoint)
            p["due"] += row.due
            p["oldest"] = _earliest(p["oldest"], row.oldest_due)
    for row in dead:
        channel(row.channel)["dead"] = row.dead
    severities: dict[str, list[SeverityBacklog]] = {}
    for row in sorted(by_priority, key=lambda r: (r.channel, r.priority)):
        channel(row.channel)
        severities.setdefault(row.channel, []).append(
            SeverityBacklog(
                severity=_SEVERITY_BY_PRIORITY.get(row.priority, str(row.priority)),
                due=row.due,
                oldest_due_age_seconds=_age(now, row.oldest_due),
            )
        )
    for row in recent:
        if row.provider is None:
            continue
        p = provider(row.channel, row.provider)
        p.update(
            attempts=row.attempts,
            delivered=row.delivered,
            last_error=row.last_error_class,
        )
    for b in breakers:
        provider(b.channel, b.provider)["breakers"].append(
            BreakerView(replica=b.owner, state=b.state, since=b.at, reason=b.reason)
        )
    return ChannelsSnapshot(
        refreshed_at=now,
        recent_window_seconds=RECENT_WINDOW_SECONDS,
        channels=[
            ChannelView(
                channel=name,
                due=c["due"],
                oldest_due_age_seconds=_age(now, c["oldest"]),
                due_by_severity=severities.get(name, []),
                in_flight=c["in_flight"],
                dead_letters=c["dead"],
                providers=[
                    ProviderView(
                        name=pname,
                        attempts_recent=p["attempts"],
                        success_rate=(
                            p["delivered"] / p["attempts"] if p["attempts"] else None
                        ),
                        last_error_class=p["last_error"],
                        due=p["due"],
                        oldest_due_age_seconds=_age(now, p["oldest"]),
                        breakers=p["breakers"],
                    )
                    for (ch, pname), p in sorted(providers.items())
                    if ch == name
                ],
            )
            for name, c in sorted(channels.items())
        ],
    )


def _earliest(a: datetime | None, b: datetime | None) -> datetime | None:
    if a is None or b is None:
        return a or b
    return min(a, b)


def _age(now: datetime, since: datetime | None) -> float | None:
    return None if since is None else max(0.0, (now - since).total_seconds())


class SnapshotRefresher:
    """Keeps the latest snapshot; a failed refresh keeps the previous one.

    Readers call ``fresh()``: it marks the snapshot as wanted and, when the background
    refreshes have stopped for want of readers, refreshes before it answers, so what a
    reader gets is never older than ``interval`` plus one refresh (as before, when the
    background refreshed it whether read or not).
    """

    def __init__(
        self,
        engine: AsyncEngine,
        interval: float,
        *,
        readiness: Callable[[], Awaitable[Readiness]] | None = None,
        idle_after: float = IDLE_AFTER,
    ) -> None:
        self._engine = engine
        self._interval = interval
        self._readiness = readiness
        self._idle_after = idle_after
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        #: ``time.monotonic()`` of the last read (none yet), and of the last refresh's
        #: start: the first refresh runs at start, the next ones once someone reads.
        self._asked = -math.inf
        self._refreshed: float | None = None
        self.current = EMPTY
        #: The last background readiness check (``dispatcher_ready``); None before one.
        self.ready: bool | None = None
        #: Refreshes run so far; for tests.
        self.refreshes = 0

    async def refresh(self) -> None:
        async with self._lock:
            await self._refresh()

    async def _refresh(self) -> None:
        self._refreshed = time.monotonic()
        self.refreshes += 1
        try:
            self.current = await take_snapshot(self._engine)
        except StorageUnavailable as exc:
            log.warning("dispatcher.api.snapshot_failed", error=str(exc))
        if self._readiness is not None:
            self.ready = (await self._readiness()).ready

    async def fresh(self) -> ChannelsSnapshot:
        """The latest snapshot; after a quiet time (no read for ``idle_after``, so the
        background refreshes had stopped), refreshed first if older than the interval.
        While reads are steady it never waits: the background keeps it fresh."""
        now = time.monotonic()
        quiet = now - self._asked >= self._idle_after
        self._asked = now
        if quiet and self._stale(now):
            async with self._lock:  # a refresh under way: its result will do
                if self._stale(time.monotonic()):
                    await self._refresh()
        return self.current

    def _stale(self, now: float) -> bool:
        return self._refreshed is not None and now - self._refreshed >= self._interval

    async def _loop(self) -> None:
        while True:
            if (
                self._refreshed is None
                or time.monotonic() - self._asked < self._idle_after
            ):
                await self.refresh()
            await asyncio.sleep(self._interval)

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="api-channel-snapshot")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
