"""Bytes to a validated event, or a Rejection. Total: it never raises."""

import hashlib
import json
import math
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

from pydantic import ValidationError

from dispatcher.events.kinds import ChannelKind
from dispatcher.events.rejection import Rejection, RejectReason
from dispatcher.events.schema import SCHEMA_VERSION, EventV1, Recipient

#: Nesting allowed in the envelope; ``data`` gets this minus one.
MAX_DEPTH = 32

_FIELD_REASONS = {
    "event_id": RejectReason.INVALID_EVENT_ID,
    "type": RejectReason.INVALID_TYPE,
    "severity": RejectReason.INVALID_SEVERITY,
    "occurred_at": RejectReason.INVALID_TIMESTAMP,
}
_ERROR_TYPE_REASONS = {
    "missing": RejectReason.MISSING_FIELD,
    "extra_forbidden": RejectReason.UNKNOWN_FIELD,
    "timezone_aware": RejectReason.NAIVE_TIMESTAMP,
    "invalid_email": RejectReason.INVALID_EMAIL,
    "invalid_phone": RejectReason.INVALID_PHONE,
    "invalid_endpoint_name": RejectReason.UNKNOWN_ENDPOINT,
}


@dataclass(frozen=True, slots=True)
class ParsedEvent:
    """A valid event with what storing it needs."""

    event: EventV1
    #: The event as canonical JSON (sorted keys): stored, hashed, never re-serialised.
    canonical: str
    #: SHA-256 of ``canonical``: same ``event_id`` with another digest is a conflict.
    digest: bytes


class _Refused(Exception):  # internal control flow only
    def __init__(self, reason: RejectReason, message: str) -> None:
        self.rejection = Rejection(reason, message)


def _refuse(reason: RejectReason, message: str) -> NoReturn:
    raise _Refused(reason, message)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        _refuse(RejectReason.DUPLICATE_KEY, "an object has the same key twice")
    return obj


def _no_constants(name: str) -> NoReturn:
    _refuse(RejectReason.NON_FINITE_NUMBER, f"{name} is not a JSON number")


def _finite(text: str) -> float:
    value = float(text)
    if math.isinf(value):  # 1e400 would be stored as null: the event would change
        _refuse(RejectReason.NON_FINITE_NUMBER, "a number is too large for a double")
    return value


def _check_tree(value: Any, depth: int, strings: bool) -> None:
    """Depth limit always; NUL and lone surrogates only when the text had escapes."""
    if depth > MAX_DEPTH:
        _refuse(RejectReason.TOO_DEEP, f"nested deeper than {MAX_DEPTH} levels")
    if isinstance(value, dict):
        for key, item in value.items():
            if strings:
                _check_string(key)
            _check_tree(item, depth + 1, strings)
    elif isinstance(value, list):
        for item in value:
            _check_tree(item, depth + 1, strings)
    elif strings and isinstance(value, str):
        _check_string(value)


def _check_string(text: str) -> None:
    if "\x00" in text:
        _refuse(RejectReason.NUL_CHARACTER, "a string contains \\u0000")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        _refuse(RejectReason.LONE_SURROGATE, "a string contains a lone surrogate")


def _from_validation_error(exc: ValidationError, obj: dict[str, Any]) -> Rejection:
    err = exc.errors(include_input=False, include_url=False)[0]
    if err["type"] == "extra_forbidden":
        return Rejection(RejectReason.UNKNOWN_FIELD, _unexpected_key(err["loc"], obj))
    loc = ".".join(str(p) for p in err["loc"])
    field = str(err["loc"][0]) if err["loc"] else ""
    reason = _ERROR_TYPE_REASONS.get(err["type"])
    if reason is None and field == "recipients" and err["loc"][-1] == "channel":
        reason = RejectReason.UNKNOWN_CHANNEL
    if reason is None:
        reason = _FIELD_REASONS.get(field, RejectReason.INVALID_FIELD)
    message = _INPUT_FRAGMENT.sub(" at", err["msg"])
    return Rejection(reason, f"{loc}: {message}" if loc else message)


# pydantic quotes a character of the input in some messages ("found `x` at 3").
_INPUT_FRAGMENT = re.compile(r": found `[^`]*` at")
_ALLOWED_KEYS = {
    (): ", ".join(EventV1.model_fields),
    ("recipients",): ", ".join(Recipient.model_fields),
}


def _unexpected_key(loc: Sequence[int | str], obj: dict[str, Any]) -> str:
    """Where an unknown key is, by position: key names come from the publisher and may
    carry personal data, so the message never repeats one."""
    *path, key = loc
    where = ".".join(str(p) for p in path) or "top level"
    allowed = _ALLOWED_KEYS.get(tuple(p for p in path if isinstance(p, str)), "")
    try:
        container: Any = obj
        for part in path:
            container = container[part]
        keys = list(container)
        position = f"key {keys.index(key) + 1} of {len(keys)}"
    except (KeyError, IndexError, TypeError, ValueError):
        position = "a key"
    return f"{where}: {position} is not a field of the contract (fields: {allowed})"


def parse_event(
    body: bytes, *, max_bytes: int, endpoints: Collection[str] = ()
) -> ParsedEvent | Rejection:
    """Validate one message body against the v1 contract.

    Args:
        body: the raw AMQP body.
        max_bytes: bodies longer than this are refused before parsing.
        endpoints: configured webhook endpoint names; a webhook recipient must name one.

    Returns:
        The parsed event, or the reason it was refused. Never raises.
    """
    try:
        return _parse(body, max_bytes, endpoints)
    except _Refused as refused:
        return refused.rejection
    except Exception as exc:  # noqa: BLE001 - total by contract: a bug must not lose the message
        return Rejection(
            RejectReason.INTERNAL_ERROR, f"parser error: {type(exc).__name__}"
        )


# Built once: json.loads and json.dumps with options build a new decoder or encoder per call.
_DECODER = json.JSONDecoder(
    object_pairs_hook=_no_duplicates, parse_constant=_no_constants, parse_float=_finite
)
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _load_json(text: str) -> Any:
    try:
        return _DECODER.decode(text)
    except json.JSONDecodeError as exc:
        _refuse(
            RejectReason.NOT_JSON,
            f"not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}",
        )
    except RecursionError:
        _refuse(RejectReason.TOO_DEEP, "nested too deeply to parse")


def _decode(body: bytes, max_bytes: int) -> dict[str, Any]:
    """The body as a JSON object that PostgreSQL can store, or refused."""
    if not body:
        _refuse(RejectReason.EMPTY_BODY, "the body is empty")
    if len(body) > max_bytes:
        _refuse(
            RejectReason.TOO_LARGE,
            f"{len(body)} bytes is over the limit of {max_bytes}",
        )
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        _refuse(RejectReason.INVALID_UTF8, f"invalid UTF-8 at byte {exc.start}")
    obj = _load_json(text)
    if not isinstance(obj, dict):
        _refuse(
            RejectReason.NOT_AN_OBJECT,
            f"the top level is a JSON {type(obj).__name__}, not an object",
        )
    escapes = "\\u" in text
    # A value is at most one level deeper than the brackets in the text: skip the walk
    # when even every bracket nested could not pass the limit and there is no escape.
    if escapes or text.count("{") + text.count("[") >= MAX_DEPTH:
        _check_tree(obj, 1, escapes)
    return obj


def _parse(body: bytes, max_bytes: int, endpoints: Collection[str]) -> ParsedEvent:
    obj = _decode(body, max_bytes)
    version = obj.get("schema_version", ...)
    if version is ...:
        _refuse(RejectReason.MISSING_SCHEMA_VERSION, "schema_version is required")
    if type(version) is not int or version != SCHEMA_VERSION:
        _refuse(
            RejectReason.UNKNOWN_SCHEMA_VERSION,
            f"schema_version must be {SCHEMA_VERSION}",
        )
    try:
        event = EventV1.model_validate(obj)
    except ValidationError as exc:
        rejection = _from_validation_error(exc, obj)
        raise _Refused(rejection.reason, rejection.message) from None
    for recipient in event.recipients:
        if recipient.channel is ChannelKind.WEBHOOK and recipient.to not in endpoints:
            _refuse(
                RejectReason.UNKNOWN_ENDPOINT,
                "recipients: a webhook recipient names no configured endpoint",
            )
    canonical = _CANONICAL.encode(event.model_dump(mode="json", exclude_none=True))
    return ParsedEvent(event, canonical, hashlib.sha256(canonical.encode()).digest())
