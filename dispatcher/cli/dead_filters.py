"""The dead-letter filter options, declared once: ``list``, ``replay`` and ``discard`` of
``dispatcher dlq`` take the same ten, and get them as one ``DeadFilter``."""

import uuid
from datetime import datetime
from typing import Annotated, Any

import typer

from dispatcher.cli.filtered import Option, filtered
from dispatcher.events.kinds import ChannelKind
from dispatcher.outbox.dead import DeadFilter

Channels = Annotated[
    list[ChannelKind], typer.Option("--channel", help="Repeat for several.")
]

_OPTIONS: tuple[Option, ...] = (
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


#: ``@dead_filtered``: the command takes ``where: DeadFilter`` and gets the options.
dead_filtered = filtered(_OPTIONS, _dead_filter)
