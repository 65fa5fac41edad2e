"""Filter options declared once per filter: a command decorated with ``filtered(...)``
gets the options in front of its own and receives them as one ``where`` value (typer reads
the signature set here), so ``list``, ``replay`` and ``discard`` never repeat them."""

import functools
import inspect
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

R = TypeVar("R")
F = TypeVar("F")

#: One option: its parameter name, its ``Annotated`` type, its default.
Option = tuple[str, Any, Any]


def filtered(
    options: Sequence[Option], build: Callable[[dict[str, Any]], F]
) -> Callable[[Callable[..., R]], Callable[..., R]]:
    """A decorator giving a command ``options``; ``build`` turns their values into the
    ``where`` the command takes."""

    def decorate(command: Callable[..., R]) -> Callable[..., R]:
        own = inspect.signature(command)
        rest = [p for p in own.parameters.values() if p.name != "where"]
        params = [
            inspect.Parameter(
                name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=hint
            )
            for name, hint, default in options
        ]

        @functools.wraps(command)
        def wrapper(**kwargs: Any) -> R:
            values = {name: kwargs.pop(name) for name, _, _ in options}
            return command(where=build(values), **kwargs)

        del wrapper.__wrapped__  # typer must see the new signature, not the command's
        wrapper.__signature__ = own.replace(parameters=[*params, *rest])  # type: ignore[attr-defined]
        wrapper.__annotations__ = {
            **{name: hint for name, hint, _ in options},
            **{p.name: p.annotation for p in rest},
            "return": own.return_annotation,
        }
        return wrapper

    return decorate
