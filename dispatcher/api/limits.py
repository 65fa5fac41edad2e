"""Bounds on every request, enforced before any route runs: query-string length, body
size and total time. Header size and idle keep-alive are the server's (``server.py``)."""

import asyncio

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dispatcher.api.problems import problem_response


class _BodyTooLarge(Exception):
    pass


class RequestLimits:
    """Pure ASGI middleware answering 414, 413 or 503 problems."""

    def __init__(
        self, app: ASGIApp, *, max_query_bytes: int, max_body_bytes: int, timeout: float
    ) -> None:
        self.app = app
        self.max_query = max_query_bytes
        self.max_body = max_body_bytes
        self.timeout = timeout

    def _refuse(self, scope: Scope) -> JSONResponse | None:
        """A problem for a request over the limits its head shows, else None."""
        path = scope.get("path")
        if len(scope.get("query_string", b"")) > self.max_query:
            return problem_response(
                414,
                f"the query string is longer than {self.max_query} bytes",
                instance=path,
            )
        length = dict(scope.get("headers", [])).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body):
            return self._too_large(path)
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path")
        refused = self._refuse(scope)
        if refused is not None:
            await refused(scope, receive, send)
            return
        started = False
        received = 0

        async def counted_receive() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_body:
                raise _BodyTooLarge
            return message

        async def tracked_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            async with asyncio.timeout(self.timeout):
                await self.app(scope, counted_receive, tracked_send)
        except (TimeoutError, _BodyTooLarge) as exc:
            if started:
                raise
            response = (
                problem_response(
                    503,
                    f"the request took longer than {self.timeout:g} s; narrow the filters",
                    instance=path,
                    headers={"Retry-After": "1"},
                )
                if isinstance(exc, TimeoutError)
                else self._too_large(path)
            )
            await response(scope, receive, send)

    def _too_large(self, path: str | None) -> JSONResponse:
        return problem_response(
            413, f"the request body is larger than {self.max_body} bytes", instance=path
        )
