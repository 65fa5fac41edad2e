"""The ``dispatcher`` command: one error funnel around typer subcommands."""

import sys
import traceback

# Importing a command module registers its commands on ``app``.
from dispatcher.cli import (  # noqa: F401
    api,
    demo,
    dlq,
    maintenance,
    publish,
    rejected,
    serve,
    status,
)
from dispatcher.cli.root import app, state
from dispatcher.errors import ConfigError


def main() -> None:
    """Entry point. Typer reports usage errors itself (exit 2); every other error prints one
    line with its chain of causes and exits 1 (2 for invalid configuration, which is a
    usage error too), with the traceback only under ``-v``."""
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:  # noqa: BLE001 - the one place every error is reported
        if state.verbose:
            traceback.print_exc()
        print(f"error: {describe(exc)}", file=sys.stderr)  # noqa: T201
        sys.exit(2 if isinstance(exc, ConfigError) else 1)


def describe(exc: BaseException) -> str:
    """``message: cause: cause`` on one line, skipping a cause already in the message."""
    parts: list[str] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        text = str(current).strip() or type(current).__name__
        if not parts or text not in parts[-1]:
            parts.append(text)
        current = current.__cause__ or (
            None if current.__suppress_context__ else current.__context__
        )
    return ": ".join(parts)


__all__ = ["app", "main"]
