"""The ``dispatcher`` command: one error funnel around typer subcommands."""

import sys
import traceback

import click
import typer

from dispatcher.cli.commands import app, state


def main() -> None:
    """Entry point: errors print one line with their chain of causes and exit 1; usage
    errors exit 2; the traceback only with ``-v``."""
    try:
        app(standalone_mode=False)
    except click.exceptions.UsageError as exc:
        exc.show()
        sys.exit(2)
    except click.exceptions.Abort:
        sys.exit(130)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except (typer.Exit, SystemExit):
        raise
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:  # noqa: BLE001 - the one place every error is reported
        if state.verbose:
            traceback.print_exc()
        print(f"error: {describe(exc)}", file=sys.stderr)  # noqa: T201
        sys.exit(1)


def describe(exc: BaseException) -> str:
    """``message: cause: cause`` on one line, without repeating a message."""
    parts: list[str] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        text = str(current).strip() or type(current).__name__
        if not parts or text not in parts[-1]:
            parts.append(
                text
                if parts or not isinstance(current, OSError)
                else f"{type(current).__name__}: {text}"
            )
        current = current.__cause__ or (
            None if current.__suppress_context__ else current.__context__
        )
    return ": ".join(parts)


__all__ = ["app", "main"]
