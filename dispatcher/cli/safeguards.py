"""What every operator write shares (``dlq replay|discard``, ``rejected replay``): the
database of one command, a filter or ``--all``, ``--reason``, confirmation on a terminal
unless ``--yes``, and who is acting (the OS user, for the audit log)."""

import getpass
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import typer

from dispatcher.cli.root import settings

Reason = Annotated[
    str | None, typer.Option("--reason", help="Why (recorded in the audit log).")
]
All = Annotated[bool, typer.Option("--all", help="Required to act without any filter.")]
Yes = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")]
DryRun = Annotated[bool, typer.Option("--dry-run", help="Show the plan only.")]
AsJson = Annotated[bool, typer.Option("--json", help="JSON output.")]


@asynccontextmanager
async def database(application_name: str) -> AsyncIterator[Any]:
    """The asyncpg connection of one command, errors translated (one clear line)."""
    from dispatcher.app import build_engine  # noqa: PLC0415
    from dispatcher.db.engine import wrap_db_errors  # noqa: PLC0415

    engine = build_engine(settings(), application_name)
    try:
        with wrap_db_errors():
            async with engine.connect() as conn:
                yield (await conn.get_raw_connection()).driver_connection
    finally:
        await engine.dispose()


def guard(
    *, unfiltered: bool, all_: bool, reason: str | None, dry_run: bool, every: str
) -> None:
    """Refuse (exit 2) to act on ``every`` without ``--all``, or to write without a reason."""
    if unfiltered and not all_:
        raise typer.BadParameter(
            f"no filter given: name what to act on, or pass --all for {every}"
        )
    if not dry_run and not (reason and reason.strip()):
        raise typer.BadParameter("--reason is required (it goes to the audit log)")


def confirm(question: str, *, yes: bool) -> None:
    """Ask on a terminal (no: exit 1); ``--yes`` or no terminal goes on."""
    if yes or not sys.stdin.isatty():
        return
    if not typer.confirm(question):
        raise typer.Exit(1)


def who() -> str:
    """The operator, as the audit log names them."""
    return getpass.getuser()
