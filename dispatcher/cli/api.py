"""``dispatcher api`` and ``dispatcher token create``: the audit API's commands."""

import json
from typing import Annotated

import typer

from dispatcher.api.config import Scope
from dispatcher.cli.root import app, run, settings

token_app = typer.Typer(help="Bearer tokens of the audit API.", no_args_is_help=True)
app.add_typer(token_app, name="token")


@app.command()
def api() -> None:
    """Run the audit query API alone (host and port from api.host / api.port)."""
    from dispatcher.api.app import create_app  # noqa: PLC0415
    from dispatcher.api.server import ApiServer  # noqa: PLC0415
    from dispatcher.app import run_until_signalled  # noqa: PLC0415
    from dispatcher.logs import configure_logging  # noqa: PLC0415

    cfg = settings()
    configure_logging(cfg.log_level, cfg.log_format)

    async def go() -> None:
        await run_until_signalled([ApiServer(create_app(cfg), cfg.api)], None)

    run(go())


@token_app.command("create")
def token_create(
    name: Annotated[
        str, typer.Argument(help="Who holds the token (logged with each PII read).")
    ],
    scope: Annotated[
        list[Scope],
        typer.Option("--scope", "-s", help="Scope to grant; repeat for several."),
    ] = [Scope.AUDIT_READ],  # noqa: B006 - typer reads the default, never mutates it
) -> None:
    """Print a new token once, and the configuration entry that accepts it.

    Only the entry's SHA-256 goes into configuration; the token itself is shown here and
    never stored. Add the entry to ``api.tokens``; delete it to revoke the token.
    """
    from pydantic import ValidationError  # noqa: PLC0415

    from dispatcher.api.auth import hash_token, new_token  # noqa: PLC0415
    from dispatcher.api.config import ApiToken  # noqa: PLC0415

    token = new_token()
    try:
        entry = ApiToken(
            name=name, sha256=hash_token(token), scopes=tuple(dict.fromkeys(scope))
        )
    except ValidationError:
        raise typer.BadParameter(
            "letters, digits and _ . @ - only, at most 64 characters", param_hint="NAME"
        ) from None
    line = json.dumps(entry.model_dump(mode="json"), separators=(", ", ": "))
    typer.echo(f"token (shown once, give it to {name}):\n  {token}")
    typer.echo(
        f"configuration entry for api.tokens (YAML flow style or JSON):\n  - {line}"
    )
