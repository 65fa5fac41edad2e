"""The ASGI application: its lifespan opens the API's own small pool, its token registry,
rate limiter, cursor codec, channel snapshot and readiness probe (Starlette lifespan
state), so a flood of API requests cannot take connections from ingest or delivery."""

import secrets
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from dispatcher.api import problems
from dispatcher.api.auth import RateLimiter, TokenRegistry
from dispatcher.api.limits import RequestLimits
from dispatcher.api.pagination import CursorCodec
from dispatcher.api.reader import ApiState
from dispatcher.api.routes import (
    audit,
    channels,
    deliveries,
    events,
    health,
    metrics,
    rejected,
    replays,
)
from dispatcher.api.snapshot import SnapshotRefresher
from dispatcher.db.engine import create_engine
from dispatcher.health import ComponentProbe, ReadinessProbe
from dispatcher.settings import Settings
from dispatcher.telemetry import metrics as telemetry_metrics

API_VERSION = "1.0.0"


def create_app(settings: Settings, *, probes: Sequence[ComponentProbe] = ()) -> FastAPI:
    """The audit API for these settings; ``probes`` add in-process readiness checks."""
    api = settings.api
    limits = api.limits

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[ApiState]:
        engine = create_engine(
            settings.database_url.get_secret_value(),
            pool_size=limits.pool_size,
            application_name="dispatcher-api",
            server_settings={
                "statement_timeout": str(limits.statement_timeout_ms),
                # Reads only; the PII-disclosure entry opts in per transaction.
                "default_transaction_read_only": "on",
            },
        )
        readiness = ReadinessProbe(engine, settings.amqp_url.get_secret_value(), probes)
        telemetry_metrics.watch_pool("api", engine.pool)
        snapshot = SnapshotRefresher(
            engine, limits.snapshot_interval, readiness=readiness.check
        )
        snapshot.start()
        cursor_key = (
            api.cursor_key.get_secret_value().encode()
            if api.cursor_key is not None
            else secrets.token_bytes(32)
        )
        try:
            yield ApiState(
                engine=engine,
                tokens=TokenRegistry(api.tokens),
                limiter=RateLimiter(limits.rate_per_second, limits.burst),
                cursors=CursorCodec(cursor_key, limits.cursor_ttl_seconds),
                recipient_key=(
                    api.recipient_hash_key.get_secret_value().encode()
                    if api.recipient_hash_key is not None
                    else None
                ),
                snapshot=snapshot,
                readiness=readiness,
                limits=limits,
            )
        finally:
            await snapshot.stop()
            await engine.dispose()

    app = FastAPI(
        title="dispatcher audit API",
        version=API_VERSION,
        description="Every event, delivery and attempt, protected and masked (docs/api.md).",
        lifespan=lifespan,
        openapi_url="/openapi.json",
        docs_url="/docs",
        redoc_url=None,
    )
    problems.install(app)
    app.add_middleware(
        RequestLimits,
        max_query_bytes=limits.max_query_bytes,
        max_body_bytes=limits.max_body_bytes,
        timeout=limits.request_timeout,
    )
    for module in (
        health,
        metrics,
        events,
        deliveries,
        rejected,
        audit,
        channels,
        replays,
    ):
        app.include_router(module.router)
    _problem_media_type(app)
    return app


def _problem_media_type(app: FastAPI) -> None:
    """Document error responses as ``application/problem+json``, which is what they are."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            for path in schema.get("paths", {}).values():
                for operation in path.values():
                    for status, response in operation.get("responses", {}).items():
                        content = response.get("content", {})
                        if (
                            status.startswith(("4", "5"))
                            and "application/json" in content
                        ):
                            media = content.pop("application/json")
                            if "Problem" in str(
                                media.get("schema", {}).get("$ref", "")
                            ):
                                content[problems.PROBLEM_JSON] = media
                            else:
                                content["application/json"] = media
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
