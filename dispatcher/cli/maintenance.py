"""Commands that set up and inspect an installation: migrate, check, schema."""

import json
from pathlib import Path
from typing import Annotated

import typer

from dispatcher.cli.root import app, run, settings


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

    run(go())
    typer.echo(f"database upgraded to {revision}")


@app.command()
def check(
    serve: Annotated[
        bool,
        typer.Option(
            "--serve",
            help="Also ask the local `dispatcher serve` (its /readyz on api.port) "
            "whether ingest consumes and each channel's worker loop runs.",
        ),
    ] = False,
) -> None:
    """Check that PostgreSQL (schema at head) and RabbitMQ answer; for health checks."""
    from dispatcher.health import check_dependencies  # noqa: PLC0415

    cfg = settings()
    problems = run(check_dependencies(cfg, serve=serve))
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
