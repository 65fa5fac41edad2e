"""What a request handler gets: the lifespan state, the authenticated principal, and the
two things it does with them (read through the API's pool; record a PII disclosure)."""

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, TypedDict, cast
from uuid import UUID

from fastapi import Depends, Request, Security
from fastapi.security import HTTPBearer
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from dispatcher.api.auth import Principal, RateLimiter, TokenRegistry, authorize
from dispatcher.api.config import ApiLimits, Scope
from dispatcher.api.disclosure import record_disclosure
from dispatcher.api.pagination import CursorCodec
from dispatcher.api.problems import ApiProblem
from dispatcher.api.snapshot import SnapshotRefresher
from dispatcher.db.engine import wrap_db_errors
from dispatcher.health import ReadinessProbe


class ApiState(TypedDict):
    """Opened by the lifespan, shared by every request (Starlette lifespan state)."""

    engine: AsyncEngine
    tokens: TokenRegistry
    limiter: RateLimiter
    cursors: CursorCodec
    recipient_key: bytes | None
    snapshot: SnapshotRefresher
    readiness: ReadinessProbe
    limits: ApiLimits


def api_state(request: Request) -> ApiState:
    return cast(ApiState, request.scope["state"])


#: Declares the scheme in the OpenAPI document; ``authorize`` reads the header itself.
_bearer = HTTPBearer(
    auto_error=False, description="A token from `dispatcher token create`."
)


@dataclass(frozen=True, slots=True)
class Reader:
    state: ApiState
    principal: Principal
    route: str

    @property
    def sees_pii(self) -> bool:
        return self.principal.sees_pii

    @asynccontextmanager
    async def connect(self) -> AsyncIterator[AsyncConnection]:
        with wrap_db_errors():
            async with self.state["engine"].connect() as conn:
                yield conn

    @asynccontextmanager
    async def driver(self, *, write: bool = False) -> AsyncIterator[Any]:
        """The asyncpg connection the outbox stores take; with ``write``, inside one
        read-write transaction (the API's sessions are read-only by default)."""
        async with self.connect() as conn:
            raw: Any = (await conn.get_raw_connection()).driver_connection
            if not write:
                yield raw
                return
            with wrap_db_errors():
                async with raw.transaction():
                    await raw.execute("SET TRANSACTION READ WRITE")
                    yield raw

    async def disclosed(
        self,
        ids: Sequence[UUID | int | str],
        *,
        event_id: UUID | None = None,
        delivery_id: UUID | None = None,
    ) -> None:
        """Record that the response shows these records unmasked (PII scope only)."""
        if self.sees_pii and ids:
            await record_disclosure(
                self.state["engine"],
                self.principal,
                self.route,
                ids,
                event_id=event_id,
                delivery_id=delivery_id,
            )

    def decode(
        self, cursor: str | None, listing: str, filters: dict[str, Any]
    ) -> list[str] | None:
        if cursor is None:
            return None
        return self.state["cursors"].decode(cursor, listing, filters)

    def encode(
        self, listing: str, filters: dict[str, Any], position: Sequence[Any]
    ) -> str:
        return self.state["cursors"].encode(
            listing, filters, [str(p) for p in position]
        )


def _reader(scopes: frozenset[Scope]) -> Any:
    def dependency(
        request: Request, _: Annotated[Any, Security(_bearer)] = None
    ) -> Reader:
        state = api_state(request)
        principal = authorize(
            state["tokens"],
            state["limiter"],
            request.headers.get("authorization"),
            scopes,
        )
        route = getattr(request.scope.get("route"), "path", request.url.path)
        return Reader(state, principal, route)

    return dependency


#: Any token that may read the audit records (masked or not).
AuditReader = Annotated[
    Reader, Depends(_reader(frozenset({Scope.AUDIT_READ, Scope.AUDIT_READ_PII})))
]


#: A token that may replay, cancel and discard dead letters.
DlqWriter = Annotated[Reader, Depends(_reader(frozenset({Scope.DLQ_WRITE})))]


def time_keyset(
    position: list[str] | None, id_type: type[Any]
) -> tuple[datetime, Any] | None:
    """A ``(time, id)`` keyset from a decoded cursor position."""
    if position is None:
        return None
    try:
        stamp, ident = position
        return datetime.fromisoformat(stamp), id_type(ident)
    except (ValueError, TypeError):
        raise ApiProblem(
            400, "the cursor is not valid; start again without it"
        ) from None
