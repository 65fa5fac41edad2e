"""Subjects and bodies per event type, rendered with ``string.Template``.

``string.Template`` rather than ``str.format``: a placeholder can only name a variable,
never reach an attribute or an index, so a template from configuration cannot read more
than the flat mapping built here. A template that cannot be rendered is a permanent
error for that delivery (``ErrorClass.TEMPLATE``), never a crash of the worker.
"""

import re
import string
from collections.abc import Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any, Final, TypeVar

from pydantic import BaseModel, ConfigDict, field_validator

from dispatcher.channels.base import OutboundMessage
from dispatcher.errors import ErrorClass, PermanentDeliveryError

#: Twilio's limit for one message body (it splits into segments below that).
SMS_MAX_CHARS: Final = 1600
#: Longer subjects are cut; RFC 5322 recommends lines under 78 characters anyway.
SUBJECT_MAX_CHARS: Final = 200

#: Variables every event has; data fields add ``data_<key>`` and ``${data.<key>}``.
ENVELOPE_VARIABLES: Final = frozenset(
    {
        "event_type",
        "severity",
        "occurred_at",
        "subject_id",
        "event_id",
        "delivery_id",
        "correlation_id",
    }
)

# Ids only: a default must be safe to send for any event, whatever its data holds.
DEFAULT_SUBJECT: Final = "[$severity] $event_type"
DEFAULT_BODY: Final = (
    "Event: $event_type\n"
    "Severity: $severity\n"
    "Occurred at: $occurred_at\n"
    "Subject: $subject_id\n"
    "Event id: $event_id\n"
    "Delivery id: $delivery_id\n"
)
DEFAULT_SMS: Final = (
    "[$severity] $event_type for $subject_id at $occurred_at (event $event_id)"
)


class _Template(string.Template):
    # ``${data.score}`` in braces; ``$data_score`` works with the default pattern.
    braceidpattern = r"(?a:[_a-z][_a-z0-9]*(?:\.[_a-z0-9]+)*)"


def check_template(text: str) -> str:
    """Validate a template's syntax and variable names; for config validators.

    Raises:
        ValueError: on a bad placeholder or a variable that no event can have.
    """
    template = _Template(text)
    if not template.is_valid():
        raise ValueError("invalid placeholder: write $$ for a literal dollar sign")
    for name in template.get_identifiers():
        if name not in ENVELOPE_VARIABLES and not name.startswith(("data_", "data.")):
            raise ValueError(f"unknown template variable {name!r}")
    return text


class EmailTemplate(BaseModel):
    """Subject and body of the emails for one event type pattern."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    subject: str = DEFAULT_SUBJECT
    body: str = DEFAULT_BODY

    @field_validator("subject", "body")
    @classmethod
    def _check(cls, value: str) -> str:
        return check_template(value)


DEFAULT_EMAIL: Final = EmailTemplate()

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class RenderedEmail:
    subject: str
    body: str


def select(templates: Mapping[str, _T], event_type: str) -> _T | None:
    """The template whose pattern matches ``event_type`` most specifically.

    An exact name beats any wildcard; among wildcards, more literal characters win
    (``crisis.detected.*`` over ``crisis.*`` over ``*``); ties go to the first listed.
    """
    best: tuple[int, int] | None = None
    chosen: _T | None = None
    for pattern, template in templates.items():
        if not fnmatchcase(event_type, pattern):
            continue
        literal = len(re.sub(r"[*?]|\[[^\]]*\]", "", pattern))
        rank = (int(pattern == event_type), literal)
        if best is None or rank > best:
            best, chosen = rank, template
    return chosen


def variables(message: OutboundMessage) -> dict[str, str]:
    """The flat mapping templates may use: envelope fields and flattened ``data``."""
    values = {
        "event_type": message.event_type,
        "severity": str(message.severity),
        "occurred_at": message.occurred_at,
        "subject_id": message.subject_id,
        "event_id": str(message.event_id),
        "delivery_id": str(message.delivery_id),
        "correlation_id": message.correlation_id or "",
    }
    flat = _flatten(message.data, ("data",))
    # Every data field on its own line, for a body that shows the whole alert.
    values["data_lines"] = "\n".join(f"{'.'.join(p[1:])}: {v}" for p, v in flat)
    for path, value in flat:
        values[".".join(path)] = value
        values["_".join(path)] = value
    return values


def _flatten(value: Any, path: tuple[str, ...]) -> list[tuple[tuple[str, ...], str]]:
    if isinstance(value, Mapping):
        items: list[tuple[tuple[str, ...], str]] = []
        for key, inner in value.items():
            items.extend(_flatten(inner, (*path, str(key))))
        return items
    if isinstance(value, list | tuple):
        return [(path, ", ".join(str(item) for item in value))]
    return [(path, "" if value is None else str(value))]


def render(text: str, message: OutboundMessage) -> str:
    """Render one template for one message.

    Raises:
        PermanentDeliveryError: ``ErrorClass.TEMPLATE`` on a missing variable or a bad
            placeholder; the message names the variable, never a value.
    """
    try:
        return _Template(text).substitute(variables(message))
    except KeyError as exc:
        raise PermanentDeliveryError(
            ErrorClass.TEMPLATE,
            f"template for {message.event_type!r} uses missing variable {exc.args[0]!r}",
        ) from None
    except ValueError:
        raise PermanentDeliveryError(
            ErrorClass.TEMPLATE,
            f"template for {message.event_type!r} has an invalid placeholder",
        ) from None


def render_email(
    templates: Mapping[str, EmailTemplate], message: OutboundMessage
) -> RenderedEmail:
    """Subject and body for ``message``, from the best matching template or the default.

    The subject is folded onto one line: a line break in a header is header injection.
    """
    template = select(templates, message.event_type) or DEFAULT_EMAIL
    subject = " ".join(render(template.subject, message).split())
    return RenderedEmail(
        subject=subject[:SUBJECT_MAX_CHARS], body=render(template.body, message)
    )


def render_sms(template: str, message: OutboundMessage) -> str:
    """One SMS body, cut to ``SMS_MAX_CHARS``."""
    return render(template, message)[:SMS_MAX_CHARS]
