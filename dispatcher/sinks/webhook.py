"""A local webhook receiver for tests and the demo, with faults controllable at run time.

It records every request (path, headers, raw body, receipt time), counts the
accepted (2xx) ones per ``webhook-id``, so a test can assert that nothing was accepted
twice, and keeps the most requests it handled at once per path (``peak_concurrent``), so
a test can assert a per-endpoint cap as the receiver sees it. It never logs: bodies are
health data, and its access log is off.
"""

import asyncio
import random
import ssl
import time
from collections import Counter
from dataclasses import dataclass
from typing import Literal

from aiohttp import web

from dispatcher.sinks.http import HttpSink

FaultKind = Literal["status", "redirect", "hang", "trickle", "flaky", "latency"]


@dataclass(frozen=True, slots=True)
class ReceivedRequest:
    """One request as the sink saw it; ``status`` is what it answered (None: no answer)."""

    path: str
    #: Header names lower-cased.
    headers: dict[str, str]
    body: bytes
    received_at: float
    status: int | None

    @property
    def webhook_id(self) -> str | None:
        return self.headers.get("webhook-id")


@dataclass(slots=True, kw_only=True)
class _Fault:
    kind: FaultKind
    status: int = 200
    #: Requests left to affect; None means every request until cleared.
    times: int | None = None
    retry_after: str | None = None
    location: str | None = None
    rate: float = 0.0
    interval: float = 0.0
    size: int = 0
    #: ``latency``: the longest delay; ``interval`` is the shortest.
    longest: float = 0.0


class WebhookSink(HttpSink[ReceivedRequest]):
    """An aiohttp server on loopback that answers 200 unless told otherwise.

    ``received`` holds every request, answered or not, with the status it got.

    Args:
        host: Address to listen on (any loopback address, e.g. ``127.0.0.2``).
        port: 0 picks a free port; read it from ``.port``.
        ssl_context: Serve HTTPS with this context (e.g. from ``trustme``).
        seed: Seed of the RNG behind ``flaky``.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        ssl_context: ssl.SSLContext | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(host=host, port=port, ssl_context=ssl_context)
        self._rng = random.Random(seed)  # noqa: S311 - fault injection, not crypto
        self._faults: dict[str, _Fault] = {}
        self._release = asyncio.Event()
        #: Accepted (2xx) requests per ``webhook-id``.
        self.accepted: Counter[str] = Counter()
        #: Requests being handled now, and the most ever handled at once, per path.
        self._open: Counter[str] = Counter()
        self.peak_concurrent: Counter[str] = Counter()

    def url(self, path: str = "/") -> str:
        scheme = "https" if self._ssl else "http"
        return f"{scheme}://{self.host}:{self.port}{path}"

    async def stop(self) -> None:
        self._release.set()  # let hanging handlers finish so shutdown is quick
        await super().stop()

    # -- faults ---------------------------------------------------------------------

    def respond(
        self,
        path: str,
        status: int,
        *,
        times: int | None = None,
        retry_after: str | None = None,
    ) -> None:
        """Answer ``status`` (with ``Retry-After`` if given) to the next ``times``."""
        self._faults[path] = _Fault(
            kind="status", status=status, times=times, retry_after=retry_after
        )

    def redirect(
        self, path: str, location: str, *, status: int = 302, times: int | None = None
    ) -> None:
        self._faults[path] = _Fault(
            kind="redirect", status=status, location=location, times=times
        )

    def hang(self, path: str, *, times: int | None = None) -> None:
        """Read the request, then never answer (until the sink stops)."""
        self._faults[path] = _Fault(kind="hang", times=times)

    def release(self) -> None:
        """Answer the requests ``hang`` holds (503), and every later one at once."""
        self._release.set()

    def trickle(
        self,
        path: str,
        *,
        interval: float = 0.5,
        size: int = 64,
        times: int | None = None,
    ) -> None:
        """Answer 200 at once, then send a ``size``-byte body one byte per ``interval``."""
        self._faults[path] = _Fault(
            kind="trickle", interval=interval, size=size, times=times
        )

    def latency(self, path: str, shortest: float, longest: float) -> None:
        """Answer 200 after a delay drawn (seeded) between ``shortest`` and ``longest`` s.

        Like a real endpoint, whose response times vary: attempts end one by one, at
        any moment, rather than in step.
        """
        self._faults[path] = _Fault(kind="latency", interval=shortest, longest=longest)

    def flaky(self, path: str, rate: float, *, status: int = 503) -> None:
        """Answer ``status`` to a random share ``rate`` of requests (seeded)."""
        self._faults[path] = _Fault(kind="flaky", status=status, rate=rate)

    def clear(self, path: str | None = None) -> None:
        """Remove the fault of ``path``, or all faults."""
        if path is None:
            self._faults.clear()
        else:
            self._faults.pop(path, None)

    # -- what was received ------------------------------------------------------------

    def received_on(self, path: str) -> list[ReceivedRequest]:
        """The requests to ``path``, oldest first."""
        return [r for r in self.received if r.path == path]

    def duplicates(self) -> list[str]:
        """``webhook-id``s accepted more than once."""
        return [wid for wid, n in self.accepted.items() if n > 1]

    # -- serving ----------------------------------------------------------------------

    def _take(self, path: str) -> _Fault | None:
        fault = self._faults.get(path)
        if fault is None:
            return None
        if fault.kind == "flaky" and self._rng.random() >= fault.rate:
            return None
        if fault.times is not None:
            fault.times -= 1
            if fault.times <= 0:
                del self._faults[path]
        return fault

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        path = request.path
        self._open[path] += 1
        self.peak_concurrent[path] = max(self.peak_concurrent[path], self._open[path])
        try:
            return await self._receive(request)
        finally:
            self._open[path] -= 1

    async def _receive(self, request: web.BaseRequest) -> web.StreamResponse:
        body = await request.read()
        received_at = time.time()
        fault = self._take(request.path)
        status: int | None = 200 if fault is None else fault.status
        if fault is not None and fault.kind == "hang":
            status = None
        headers = {k.lower(): v for k, v in request.headers.items()}
        self.received.append(
            ReceivedRequest(request.path, headers, body, received_at, status)
        )
        if status is not None and 200 <= status < 300:  # noqa: PLR2004
            webhook_id = headers.get("webhook-id")
            if webhook_id is not None:
                self.accepted[webhook_id] += 1
        return await self._answer(request, fault)

    async def _answer(
        self, request: web.BaseRequest, fault: _Fault | None
    ) -> web.StreamResponse:
        if fault is None or fault.kind == "flaky":
            return web.Response(status=200 if fault is None else fault.status)
        if fault.kind == "latency":
            await asyncio.sleep(self._rng.uniform(fault.interval, fault.longest))
            return web.Response(status=200)
        if fault.kind == "hang":
            await self._release.wait()
            return web.Response(status=503)
        if fault.kind == "redirect":
            return web.Response(
                status=fault.status, headers={"Location": fault.location or "/"}
            )
        if fault.kind == "trickle":
            response = web.StreamResponse(status=200)
            response.content_length = fault.size
            await response.prepare(request)
            for _ in range(fault.size):
                await response.write(b".")
                await asyncio.sleep(fault.interval)
            return response
        headers = {"Retry-After": fault.retry_after} if fault.retry_after else {}
        return web.Response(status=fault.status, headers=headers)
