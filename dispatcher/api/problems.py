"""RFC 9457 problem details: every error the API returns is ``application/problem+json``.

The detail says what was wrong with the request in words a caller can act on; it never
carries a stack trace, SQL, a secret or a value the caller sent (which may be PII).
"""

from collections.abc import Iterable, Iterator, Mapping
from http import HTTPStatus
from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from dispatcher.errors import StorageConflict, StorageUnavailable

PROBLEM_JSON = "application/problem+json"
log = structlog.get_logger("dispatcher.api")


class FieldError(BaseModel):
    """One invalid parameter: where, and pydantic's reason (never the value sent)."""

    loc: list[str | int]
    msg: str


class Problem(BaseModel):
    """An RFC 9457 problem document."""

    type: str = Field(default="about:blank", description="A URI naming the problem.")
    title: str
    status: int = Field(ge=400, le=599)
    detail: str | None = None
    instance: str | None = Field(default=None, description="The request path.")
    errors: list[FieldError] | None = None


class ApiProblem(Exception):
    """Raised by handlers and dependencies to answer with a problem document."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        type_: str = "about:blank",
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.type = type_
        self.headers = dict(headers or {})


def problem_response(
    status: int,
    detail: str | None,
    *,
    instance: str | None = None,
    type_: str = "about:blank",
    headers: Mapping[str, str] | None = None,
    errors: list[FieldError] | None = None,
) -> JSONResponse:
    """A problem document response; the title is the status phrase."""
    body = Problem(
        type=type_,
        title=HTTPStatus(status).phrase,
        status=status,
        detail=detail,
        instance=instance,
        errors=errors,
    )
    return JSONResponse(
        body.model_dump(exclude_none=True),
        status_code=status,
        media_type=PROBLEM_JSON,
        headers=dict(headers or {}),
    )


#: Documented on every route, so clients (and schemathesis) know the error shapes.
PROBLEM_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": Problem, "description": "Bad cursor or filter combination"},
    401: {"model": Problem, "description": "Missing or invalid bearer token"},
    403: {"model": Problem, "description": "The token lacks the scope"},
    404: {"model": Problem, "description": "No such resource"},
    413: {"model": Problem, "description": "Request body too large"},
    414: {"model": Problem, "description": "Query string too long"},
    422: {"model": Problem, "description": "Invalid parameter"},
    429: {"model": Problem, "description": "Rate limit exceeded (see Retry-After)"},
    503: {"model": Problem, "description": "Storage unavailable or request timed out"},
}


def _parameter(loc: list[str | int]) -> str:
    """``["query", "severity", 0]`` -> ``severity``: the parameter, not the list index."""
    named = [p for p in loc[1:] if isinstance(p, str)]
    return named[0] if named else str(loc[-1])


def _routes(routes: Iterable[Any]) -> Iterator[Any]:
    """The routes themselves, through the wrappers FastAPI puts around included routers."""
    for route in routes:
        inner = getattr(route, "original_router", None)
        yield from _routes(inner.routes) if inner is not None else (route,)


def _allowed(request: Request, named: str | None) -> str:
    """Every method some route serves at this path: Starlette names only the first
    route's (``named``), though ``GET`` and ``POST /v1/replays`` are two routes."""
    methods = {m.strip() for m in (named or "").split(",") if m.strip()}
    for route in _routes(request.app.router.routes):
        match, _ = route.matches(request.scope)
        if match != Match.NONE:
            methods |= getattr(route, "methods", None) or set()
    return ", ".join(sorted(methods))


def install(app: FastAPI) -> None:
    """Register the handlers that turn every error into a problem document."""

    async def on_problem(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ApiProblem)  # noqa: S101 - registered for ApiProblem only
        return problem_response(
            exc.status,
            exc.detail,
            instance=request.url.path,
            type_=exc.type,
            headers=exc.headers,
        )

    async def on_http(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)  # noqa: S101
        detail = {
            404: "no such resource",
            405: f"method {request.method} is not allowed here",
        }.get(exc.status_code, str(exc.detail))
        headers = dict(exc.headers or {})
        if exc.status_code == HTTPStatus.METHOD_NOT_ALLOWED:
            headers["Allow"] = _allowed(request, headers.get("Allow"))
        return problem_response(
            exc.status_code, detail, instance=request.url.path, headers=headers
        )

    async def on_validation(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)  # noqa: S101
        errors = [
            FieldError(loc=list(e.get("loc", ())), msg=str(e.get("msg", "invalid")))
            for e in exc.errors()
        ]
        names = ", ".join(dict.fromkeys(_parameter(e.loc) for e in errors if e.loc))
        return problem_response(
            422,
            f"invalid parameter: {names}" if names else "invalid request",
            instance=request.url.path,
            errors=errors,
        )

    async def on_storage(request: Request, exc: Exception) -> JSONResponse:
        log.warning("dispatcher.api.storage_unavailable", error=str(exc))
        return problem_response(
            503,
            "the database is unavailable or the query took too long; retry later",
            instance=request.url.path,
            headers={"Retry-After": "1"},
        )

    async def on_refused(request: Request, _: Exception) -> JSONResponse:
        return problem_response(
            422, "a parameter value cannot be searched for", instance=request.url.path
        )

    async def on_error(request: Request, exc: Exception) -> JSONResponse:
        # Only the class: messages of driver errors can hold SQL parameters (PII).
        log.error(
            "dispatcher.api.error", error_type=type(exc).__name__, path=request.url.path
        )
        return problem_response(
            500, "internal error; it was logged", instance=request.url.path
        )

    app.add_exception_handler(ApiProblem, on_problem)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StorageUnavailable, on_storage)
    app.add_exception_handler(StorageConflict, on_refused)
    app.add_exception_handler(Exception, on_error)
