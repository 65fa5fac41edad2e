"""The channel snapshot (``/v1/channels``, the ``/metrics`` outbox gauges) is refreshed in
the background only while someone reads it, and a read after a quiet time is fresh."""

import asyncio
import time

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from dispatcher.api.snapshot import SnapshotRefresher
from tests.api import seed
from tests.waiting import NotYet, wait_for

pytestmark = pytest.mark.postgres

INTERVAL = 0.05
IDLE_AFTER = 0.3


async def test_refreshes_stop_without_readers_and_a_read_gets_a_fresh_snapshot(
    engine: AsyncEngine,
) -> None:
    """One refresh at start; none while nobody reads (a window of 10 intervals, the
    only way to see an absence); a read then refreshes before it answers, and reads
    bring the steady refreshes back."""
    refresher = SnapshotRefresher(engine, INTERVAL, idle_after=IDLE_AFTER)
    refresher.start()
    try:
        await wait_for(lambda: refresher.refreshes == 1, "the refresh at start")
        await asyncio.sleep(10 * INTERVAL)
        assert refresher.refreshes == 1
        assert refresher.current.channels == []

        recipients = [
            {"channel": "email", "to": "duty@example.org"},
            {"channel": "sms", "to": "+447700900123"},
        ]
        await seed.events(engine, [seed.event(recipients=recipients)], key=None)
        asked = time.monotonic()
        snap = await refresher.fresh()
        assert refresher.refreshes == 2
        assert snap.refreshed_at is not None
        assert sum(c.due for c in snap.channels) == 2

        async def refreshing() -> int | NotYet:
            await refresher.fresh()
            done = refresher.refreshes
            return done if done >= 6 else NotYet(done)

        await wait_for(refreshing, "steady refreshes while read", interval=INTERVAL)
        assert time.monotonic() - asked < 30
    finally:
        await refresher.stop()
