"""Routing rules: which recipients an event gets besides the ones it names. Pure."""

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from dispatcher.events.kinds import ChannelKind, Severity
from dispatcher.events.schema import Recipient

TypePattern = Annotated[
    str, StringConstraints(pattern=r"^[a-z0-9_.*?\[\]!]+$", max_length=200)
]


class RoutingRule(BaseModel):
    """Add ``recipients`` to every event whose type matches and whose severity qualifies.

    ``types`` are shell-style patterns (``crisis.*``, ``*``); ``min_severity`` admits that
    severity and every more urgent one; ``severities``, when given, must also contain it.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: Annotated[str, StringConstraints(min_length=1, max_length=100)]
    types: tuple[TypePattern, ...] = ("*",)
    min_severity: Severity = Severity.INFO
    severities: tuple[Severity, ...] | None = None
    recipients: tuple[Recipient, ...] = Field(min_length=1)

    @field_validator("types")
    @classmethod
    def _some_types(cls, types: tuple[str, ...]) -> tuple[str, ...]:
        if not types:
            raise ValueError("at least one type pattern is required")
        return types

    def matches(self, event_type: str, severity: Severity) -> bool:
        """True when this rule applies to an event of that type and severity."""
        if not severity.at_least(self.min_severity):
            return False
        if self.severities is not None and severity not in self.severities:
            return False
        return any(fnmatchcase(event_type, pattern) for pattern in self.types)


@dataclass(frozen=True, slots=True)
class Route:
    """One delivery an event causes."""

    channel: ChannelKind
    to: str
    #: The rule that added it, or None for a recipient the event named itself.
    rule: str | None


def route(
    event_type: str,
    severity: Severity,
    explicit: Iterable[Recipient],
    rules: Sequence[RoutingRule],
    endpoint_filters: Mapping[str, Sequence[str]] | None = None,
) -> list[Route]:
    """Explicit recipients plus rule recipients, de-duplicated by (channel, address).

    Args:
        endpoint_filters: webhook endpoint name -> event-type patterns it accepts; a webhook
            route to an endpoint whose patterns do not match is left out.
    """
    routes: dict[tuple[ChannelKind, str], Route] = {}
    for recipient in explicit:
        routes.setdefault(
            (recipient.channel, recipient.to),
            Route(recipient.channel, recipient.to, None),
        )
    for rule in rules:
        if rule.matches(event_type, severity):
            for recipient in rule.recipients:
                key = (recipient.channel, recipient.to)
                routes.setdefault(
                    key, Route(recipient.channel, recipient.to, rule.name)
                )
    if endpoint_filters:
        return [
            r
            for r in routes.values()
            if r.channel is not ChannelKind.WEBHOOK
            or any(
                fnmatchcase(event_type, p) for p in endpoint_filters.get(r.to, ("*",))
            )
        ]
    return list(routes.values())
