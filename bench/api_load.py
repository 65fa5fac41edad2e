"""A steady audit-API query load against running replicas, for bench/e2e.py.

Each replica's API gets ``rate`` requests per second, one at a time, cycling through the
typical list queries of an operator or a crisis team (newest events, a type prefix,
critical events, dead and SMS deliveries, a count, the audit log), with a token that may
read (masked). Issue 12: "a flood of API requests never slows ingest or delivery".
"""

import asyncio
import re
import time
from pathlib import Path
from typing import Any

import aiohttp

from dispatcher.api.auth import hash_token, new_token

#: The typical list queries, in the order they are cycled through.
QUERIES: tuple[tuple[str, dict[str, str]], ...] = (
    ("/v1/events", {}),
    ("/v1/events", {"type": "crisis.*"}),
    ("/v1/events", {"severity": "critical"}),
    ("/v1/deliveries", {"status": "dead"}),
    ("/v1/deliveries", {"channel": "sms"}),
    ("/v1/deliveries/count", {"status": "pending"}),
    ("/v1/audit", {}),
)

#: The port on a ``dispatcher.api.started`` line, JSON or console format.
_PORT = re.compile(r"\bport\W+(\d+)")


def api_port(log: Path, timeout: float = 30) -> int:
    """The port a replica's API listens on, from its ``dispatcher.api.started`` line."""
    deadline = time.monotonic() + timeout
    while True:
        for line in log.read_text(errors="replace").splitlines():
            found = _PORT.search(line)
            if "dispatcher.api.started" in line and found is not None:
                return int(found.group(1))
        if time.monotonic() > deadline:
            raise RuntimeError(f"no dispatcher.api.started in {log}")
        time.sleep(0.05)


class ApiLoad:
    """``rate`` requests/s to each replica's API until ``stop``; latencies and failures
    kept. At a rate of 0 it is off: every method does nothing."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.token = new_token()
        self._latencies: list[float] = []
        self._failed = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._session: aiohttp.ClientSession | None = None

    @property
    def suffix(self) -> str:
        """Appended to the scenario's name, so runs with and without load stay apart."""
        return "-api-load" if self.rate > 0 else ""

    def api_config(self) -> dict[str, Any]:
        """The settings a replica needs to accept this load's token."""
        if self.rate <= 0:
            return {}
        token = {"name": "bench-load", "sha256": hash_token(self.token)}
        return {"api": {"tokens": [{**token, "scopes": ["audit:read"]}]}}

    def start(self, logs: list[Path]) -> None:
        """Load the API of each replica, found in its log."""
        if self.rate <= 0:
            return
        self._session = aiohttp.ClientSession(
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=aiohttp.ClientTimeout(total=30),
        )
        self._tasks = [asyncio.create_task(self._drive(api_port(log))) for log in logs]

    async def stop(self) -> dict[str, Any]:
        """``{"api_load": figures}`` the first time when it ran, else ``{}``."""
        if self._session is None:
            return {}
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._session.close()
        self._session = None
        lat = sorted(self._latencies)
        return {
            "api_load": {
                "rate_per_replica": self.rate,
                "requests": len(lat),
                "failed": self._failed,
                "p50_ms": lat[len(lat) // 2] if lat else 0.0,
                "p99_ms": lat[min(len(lat) - 1, int(0.99 * len(lat)))] if lat else 0.0,
            }
        }

    async def _drive(self, port: int) -> None:
        assert self._session is not None
        start, i = time.monotonic(), 0
        while True:
            path, params = QUERIES[i % len(QUERIES)]
            t0 = time.perf_counter()
            try:
                async with self._session.get(
                    f"http://127.0.0.1:{port}{path}", params=params
                ) as response:
                    await response.read()
                    ok = response.status == 200
            except (aiohttp.ClientError, TimeoutError):
                ok = False
            if ok:
                self._latencies.append((time.perf_counter() - t0) * 1000)
            else:
                self._failed += 1
            i += 1
            delay = start + i / self.rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
