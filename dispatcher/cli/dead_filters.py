"""The dead-letter filter options, declared once: ``list``, ``replay`` and ``discard`` of
``dispatcher dlq`` take the same ten, and get them as one ``DeadFilter``."""

import functools
import inspect
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any, TypeVar

import typer

from dispatcher.events.kinds import ChannelKind
from dispatcher.outbox.dead import DeadFilter

R = TypeVar("R")

Channels = Annotated[
    list[ChannelKind], typer.Option("--channel", help="Repeat for several.")
]

_OPTIONS: tuple[tuple[str, Any, Any], ...] = (
    ("channel", Channels, []),
    (
        "type_",
        Annotated[
            str | None, typer.Option("--type", help="Event type prefix, e.g. crisis.")
        ],
        None,
    ),
    ("severity", Annotated[list[str], typer.Option(help="Repeatable.")], []),
    ("error_class", Annotated[list[str], typer.Option(help="Repeatable.")], []),
    (
        "endpoint",
        Annotated[
            list[str],
            typer.Option(help="Webhook endpoint or email/SMS provider name."),
        ],
        [],
    ),
    (
        "dead_from",
        Annotated[datetime | None, typer.Option(help="Dead-lettered at or after.")],
        None,
    ),
    (
        "dead_until",
        Annotated[datetime | None, typer.Option(help="Dead-lettered at or before.")],
        None,
    ),
    ("event_id", Annotated[list[uuid.UUID], typer.Option(help="Repeatable.")], []),
    ("delivery_id", Annotated[list[uuid.UUID], typer.Option(help="Repeatable.")], []),
    (
        "failures_of",
        Annotated[
            uuid.UUID | None,
            typer.Option(help="The deliveries this replay failed again."),
        ],
        None,
    ),
)


def _dead_filter(values: dict[str, Any]) -> DeadFilter:
    return DeadFilter(
        channels=tuple(c.value for c in values["channel"]),
        type_prefix=values["type_"],
        severities=tuple(values["severity"]),
        error_classes=tuple(values["error_class"]),
        endpoints=tuple(values["endpoint"]),
        dead_from=values["dead_from"],
        dead_until=values["dead_until"],
        event_ids=tuple(values["event_id"]),
        delivery_ids=tuple(values["delivery_id"]),
        failures_of=values["failures_of"],
    )


def dead_filtered(command: Callable[..., R]) -> Callable[..., R]:
    """Give a command the filter options, in front of its own; it receives them as one
    ``where: DeadFilter`` parameter (typer reads the signature this sets)."""
    own = inspect.signature(command)
    params = [
        inspect.Parameter(
            name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=hint
        )
        for name, hint, default in _OPTIONS
    ]
    rest = [
        p.replace(kind=inspect.Parameter.KEYWORD_ONLY)
        for p in own.parameters.values()
        if p.name != "where"
    ]

    @functools.wraps(command)
    def wrapper(**kwargs: Any) -> R:
        values = {name: kwargs.pop(name) for name, _, _ in _OPTIONS}
        return command(where=_dead_filter(values), **kwargs)

    del wrapper.__wrapped__  # typer must see the new signature, not the command's
    wrapper.__signature__ = own.replace(parameters=[*params, *rest])  # type: ignore[attr-defined]
    wrapper.__annotations__ = {
        **{name: hint for name, hint, _ in _OPTIONS},
        **{p.name: p.annotation for p in rest},
        "return": own.return_annotation,
    }
    return wrapper
