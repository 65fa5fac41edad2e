"""Subcommands. Every option can also come from an environment variable."""

import contextlib
import json
import logging
import os
import sys
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import structlog
import typer

from dispatcher.events.kinds import ChannelKind
from dispatcher.settings import Settings, load_settings

if TYPE_CHECKING:
    pass

T = TypeVar("T")
log = structlog.get_logger("dispatcher")

app = typer.Typer(
    name="dispatcher",
    help="Event-driven notification dispatcher for alerts that must never be lost.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@dataclass
class _State:
    verbose: bool = False
    config: Path | None = None


state = _State()

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        envvar="DISPATCHER_CONFIG",
        help="YAML configuration file.",
        show_default=False,
    ),
]


@app.callback()
def _root(
    config: ConfigOption = None,
    verbose: Annotated[
        bool,
        typer.Option(
            "--verbose", "-v", envvar="DISPATCHER_VERBOSE", help="Show tracebacks."
        ),
    ] = False,
) -> None:
    state.verbose = verbose
    state.config = config
    # One-shot commands report their own errors in one line; library log records would only
    # repeat them (serve configures real logging itself).
    logging.getLogger().setLevel(logging.DEBUG if verbose else logging.CRITICAL)


def settings() -> Settings:
    return load_settings(state.config)


@contextlib.contextmanager
def traced() -> Iterator[None]:
    """Tracing as the OTEL_* variables say (off unless they ask), flushed at the end."""
    from dispatcher.telemetry.setup import (  # noqa: PLC0415
        configure_tracing,
        shutdown_tracing,
    )

    # The OpenTelemetry SDK reads OTEL_* itself, by its specification; we only decide on/off.
    configure_tracing(os.environ)
    try:
        yield
    finally:
        shutdown_tracing()


def _run(coro: Coroutine[Any, Any, T]) -> T:
    import uvloop  # noqa: PLC0415 - only the commands that run a loop need it

    return uvloop.run(coro)


@app.command()
def migrate(
    revision: Annotated[
        str, typer.Option(envvar="DISPATCHER_MIGRATE_REVISION", help="Target revision.")
    ] = "head",
) -> None:
    """Upgrade the database schema (idempotent)."""
    from dispatcher.app import build_engine  # noqa: PLC0415
    from dispatcher.db import migrate as migrations  # noqa: PLC0415

    cfg = settings()

    async def go() -> None:
        engine = build_engine(cfg, "dispatcher-migrate")
        try:
            await migrations.upgrade(engine, revision)
        finally:
            await engine.dispose()

    _run(go())
    typer.echo(f"database upgraded to {revision}")


@app.command()
def serve(
    ingest_only: Annotated[
        bool,
        typer.Option(
            "--ingest-only",
            envvar="DISPATCHER_INGEST_ONLY",
            help="Run no channel workers (run them with `dispatcher worker`).",
        ),
    ] = False,
    no_api: Annotated[
        bool,
        typer.Option(
            "--no-api",
            envvar="DISPATCHER_SERVE_NO_API",
            help="Do not serve the audit API (run it with `dispatcher api`).",
        ),
    ] = False,
) -> None:
    """Run the dispatcher: ingest, channel workers and the audit API, until SIGTERM."""
    from dispatcher.app import (  # noqa: PLC0415
        IngestService,
        Service,
        build_delivery,
        build_engine,
        channel_configs,
        run_until_signalled,
    )
    from dispatcher.logs import configure_logging  # noqa: PLC0415

    cfg = settings()
    configure_logging(cfg.log_level, cfg.log_format)
    deliver = not ingest_only and bool(channel_configs(cfg))

    async def go() -> None:
        engine = build_engine(cfg)
        services: list[Service] = [IngestService(cfg, engine)]
        if deliver:
            services.append(build_delivery(cfg, engine))
        elif not ingest_only:
            log.warning("dispatcher.no_channels", hint="deliveries stay pending")
        if not no_api:
            from dispatcher.api.app import create_app  # noqa: PLC0415
            from dispatcher.api.server import ApiServer  # noqa: PLC0415

            services.append(ApiServer(create_app(cfg), cfg.api))
        await run_until_signalled(services, engine)

    with traced():
        _run(go())


@app.command()
def worker(
    channel: Annotated[
        list[ChannelKind],
        typer.Option(
            "--channel",
            envvar="DISPATCHER_WORKER_CHANNELS",
            help="Channel to deliver; repeat for several. Default: every configured one.",
            show_default=False,
        ),
    ] = [],  # noqa: B006 - typer reads the default, never mutates it
) -> None:
    """Run channel workers only (no ingest), e.g. to scale one channel on its own."""
    from dispatcher.app import (  # noqa: PLC0415
        build_delivery,
        build_engine,
        channel_configs,
        run_until_signalled,
    )
    from dispatcher.logs import configure_logging  # noqa: PLC0415

    cfg = settings()
    configure_logging(cfg.log_level, cfg.log_format)
    configured = channel_configs(cfg)
    missing = [c.value for c in channel if c not in configured]
    if missing:
        raise typer.BadParameter(
            f"not enabled or not configured: {', '.join(missing)}",
            param_hint="--channel",
        )

    async def go() -> None:
        engine = build_engine(cfg, "dispatcher-worker")
        service = build_delivery(cfg, engine, only=set(channel) or None)
        await run_until_signalled([service], engine)

    with traced():
        _run(go())


@app.command()
def publish(
    source: Annotated[
        str,
        typer.Argument(
            help="Event file (JSON object or array of objects), or - for stdin."
        ),
    ] = "-",
    routing_key: Annotated[
        str | None,
        typer.Option(
            "--routing-key",
            "-k",
            envvar="DISPATCHER_PUBLISH_ROUTING_KEY",
            help="Default: each event's type.",
        ),
    ] = None,
    confirm_timeout: Annotated[
        float, typer.Option(envvar="DISPATCHER_PUBLISH_CONFIRM_TIMEOUT", min=0.1)
    ] = 5.0,
    attempts: Annotated[
        int, typer.Option(envvar="DISPATCHER_PUBLISH_ATTEMPTS", min=1, max=100)
    ] = 5,
) -> None:
    """Publish events to the exchange, waiting for the broker's confirms.

    A file that is not JSON is published as it is (it will be stored as a rejected message).
    """
    from dispatcher.publisher import Publisher  # noqa: PLC0415

    cfg = settings()
    messages = _messages(_read(source), routing_key)

    async def go() -> int:
        async with Publisher(
            cfg.amqp_url.get_secret_value(),
            cfg.exchange,
            confirm_timeout=confirm_timeout,
            attempts=attempts,
        ) as publisher:
            return await publisher.publish_many(messages)

    with traced():
        count = _run(go())
    typer.echo(f"published {count} message(s) to exchange {cfg.exchange!r}")


def _read(source: str) -> bytes:
    if source == "-":
        return sys.stdin.buffer.read()
    path = Path(source)
    if not path.is_file():
        raise typer.BadParameter(f"no such file: {source}", param_hint="SOURCE")
    return path.read_bytes()


def _messages(
    raw: bytes, routing_key: str | None
) -> list[tuple[bytes, str, str | None]]:
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError):
        if routing_key is None:
            raise typer.BadParameter(
                "the input is not JSON: give --routing-key to publish it anyway"
            ) from None
        return [(raw, routing_key, None)]
    if isinstance(doc, list):
        return [_one(json.dumps(item).encode(), item, routing_key) for item in doc]
    return [_one(raw, doc, routing_key)]


def _one(
    body: bytes, doc: object, routing_key: str | None
) -> tuple[bytes, str, str | None]:
    fields = doc if isinstance(doc, dict) else {}
    key = routing_key or fields.get("type")
    if not isinstance(key, str) or not key:
        raise typer.BadParameter("an event has no string 'type': give --routing-key")
    event_id = fields.get("event_id")
    return body, key, event_id if isinstance(event_id, str) else None


@app.command()
def check() -> None:
    """Check that PostgreSQL (schema at head) and RabbitMQ answer; for health checks."""
    from dispatcher.health import check_dependencies  # noqa: PLC0415

    cfg = settings()
    problems = _run(check_dependencies(cfg))
    if problems:
        for problem in problems:
            typer.echo(f"not ready: {problem}", err=True)
        raise typer.Exit(1)
    typer.echo("ok")


@app.command()
def schema(
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Write to this file instead of stdout."),
    ] = None,
) -> None:
    """Print the JSON Schema of the event contract (v1)."""
    from dispatcher.events.schema import event_json_schema  # noqa: PLC0415

    text = json.dumps(event_json_schema(), indent=2, sort_keys=True) + "\n"
    if output is None:
        typer.echo(text, nl=False)
    else:
        output.write_text(text)


@app.command()
def demo(
    events: Annotated[
        int, typer.Option(envvar="DISPATCHER_DEMO_EVENTS", min=1, max=1000)
    ] = 6,
) -> None:
    """Run the service with local sink servers, publish sample crisis events, show the result."""
    from dispatcher.demo import run_demo  # noqa: PLC0415

    _run(run_demo(settings(), events=events))


@app.command()
def status() -> None:
    """Show deliveries per channel and status, and the latest state of every breaker."""
    from rich.console import Console  # noqa: PLC0415
    from rich.table import Table  # noqa: PLC0415

    from dispatcher.app import build_engine  # noqa: PLC0415
    from dispatcher.db.engine import wrap_db_errors  # noqa: PLC0415
    from dispatcher.outbox.status import (  # noqa: PLC0415
        BreakerStatus,
        QueueCount,
        breaker_status,
        queue_status,
    )

    cfg = settings()

    async def go() -> tuple[list[QueueCount], list[BreakerStatus]]:
        engine = build_engine(cfg, "dispatcher-status")
        try:
            with wrap_db_errors():
                async with engine.connect() as conn:
                    return await queue_status(conn), await breaker_status(conn)
        finally:
            await engine.dispose()

    counts, breakers = _run(go())
    console = Console()
    queue = Table(title="deliveries")
    for column in ("channel", "status", "count", "next due"):
        queue.add_column(column)
    for c in counts:
        queue.add_row(c.channel, c.status, str(c.count), str(c.next_due or ""))
    console.print(queue)
    table = Table(
        title="circuit breakers (latest transition per replica; none = closed)"
    )
    for column in ("replica", "channel", "provider", "state", "reason", "since"):
        table.add_column(column)
    for b in breakers:
        table.add_row(b.owner, b.channel, b.provider, b.state, b.reason, str(b.at))
    console.print(table)
