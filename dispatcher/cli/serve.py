"""``dispatcher serve`` and ``dispatcher worker``: run the service until SIGTERM."""

from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated

import structlog
import typer

from dispatcher.cli.root import app, run, settings, traced
from dispatcher.events.kinds import ChannelKind
from dispatcher.settings import Settings

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from dispatcher.app import Service
    from dispatcher.health import ComponentProbe

log = structlog.get_logger("dispatcher")


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
    cfg = settings()
    _serve(
        cfg,
        "dispatcher",
        lambda engine: serve_services(
            cfg, engine, ingest_only=ingest_only, api=not no_api
        ),
    )


def serve_services(
    cfg: Settings, engine: "AsyncEngine", *, ingest_only: bool = False, api: bool = True
) -> list["Service"]:
    """What ``dispatcher serve`` runs: ingest, the channel workers and the audit API,
    whose ``/readyz`` also reports this process's ingest consumer and worker loops."""
    from dispatcher.app import (  # noqa: PLC0415
        IngestService,
        build_delivery,
        channel_configs,
        worker_probes,
    )

    delivery = (
        build_delivery(cfg, engine)
        if not ingest_only and channel_configs(cfg)
        else None
    )
    ingest = IngestService(
        cfg, engine, handoff=delivery.fast_path if delivery is not None else None
    )
    built: list[Service] = [ingest]
    probes: list[ComponentProbe] = [ingest.probe]
    if delivery is not None:
        built.append(delivery)
        probes += worker_probes(delivery)
    elif not ingest_only:
        log.warning("dispatcher.no_channels", hint="deliveries stay pending")
    if api:
        from dispatcher.api.app import create_app  # noqa: PLC0415
        from dispatcher.api.server import ApiServer  # noqa: PLC0415

        built.append(ApiServer(create_app(cfg, probes=probes), cfg.api))
    return built


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
    """Run channel workers only (no ingest), e.g. to scale one channel on its own.

    It serves no API; with ``metrics_port`` set it serves ``/metrics`` there."""
    from dispatcher.app import build_delivery, channel_configs  # noqa: PLC0415

    cfg = settings()
    configured = channel_configs(cfg)
    missing = [c.value for c in channel if c not in configured]
    if missing:
        raise typer.BadParameter(
            f"not enabled or not configured: {', '.join(missing)}",
            param_hint="--channel",
        )
    _serve(
        cfg,
        "dispatcher-worker",
        lambda engine: [build_delivery(cfg, engine, only=set(channel) or None)],
        serve_metrics=True,
    )


def _serve(
    cfg: Settings,
    application_name: str,
    services: Callable[["AsyncEngine"], list["Service"]],
    *,
    serve_metrics: bool = False,
) -> None:
    """Configure logging, build the engine and the services, run until a signal;
    with ``serve_metrics`` and ``metrics_port`` set, serve ``/metrics`` meanwhile."""
    from dispatcher.app import build_engine, run_until_signalled  # noqa: PLC0415
    from dispatcher.logs import configure_logging  # noqa: PLC0415
    from dispatcher.telemetry import metrics  # noqa: PLC0415

    configure_logging(cfg.log_level, cfg.log_format)
    stop_metrics: Callable[[], None] | None = None
    if serve_metrics and cfg.metrics_port is not None:
        stop_metrics = metrics.serve(cfg.metrics_host, cfg.metrics_port)
        log.info("dispatcher.metrics.serving", port=cfg.metrics_port)

    async def go() -> None:
        engine = build_engine(cfg, application_name)
        await run_until_signalled(services(engine), engine)

    try:
        with traced():
            run(go())
    finally:
        if stop_metrics is not None:
            stop_metrics()
