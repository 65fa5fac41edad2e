"""The ``dispatcher`` typer app: global options, and what every command shares."""

import contextlib
import logging
import os
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from dispatcher.settings import Settings, load_settings

T = TypeVar("T")

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
    from dispatcher.telemetry.switch import wanted_exporters  # noqa: PLC0415

    if not wanted_exporters(os.environ):
        yield  # off: the OpenTelemetry SDK is never imported
        return
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


def run(coro: Coroutine[Any, Any, T]) -> T:
    import uvloop  # noqa: PLC0415 - only the commands that run a loop need it

    return uvloop.run(coro)
