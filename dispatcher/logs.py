"""Structured logs: one JSON object per line, ids only (never payloads, addresses or numbers).

Every line carries the current trace and span ids, and the ids bound for the message at
hand (``event_id``, ``delivery_id``). A last processor redacts what must never be logged
even when a line carries it by mistake: payload and recipient fields by name, and e-mail
addresses, E.164 numbers, bearer tokens, webhook secrets and URL credentials in any text.
"""

import logging
import re
import sys
from collections.abc import Mapping
from typing import Any, Literal

import structlog
from opentelemetry import trace

#: Longest string value a log line carries; user-controlled text is cut (log-injection safety).
MAX_VALUE_LENGTH = 256


def _cap_values(
    _logger: object, _name: str, event_dict: structlog.typing.EventDict
) -> structlog.typing.EventDict:
    for key, value in event_dict.items():
        if isinstance(value, str) and len(value) > MAX_VALUE_LENGTH:
            event_dict[key] = value[:MAX_VALUE_LENGTH] + "…"
    return event_dict


REDACTED = "[redacted]"
#: Fields whose value is redacted whole, whatever it holds: payloads, recipients, secrets.
SENSITIVE_KEYS = frozenset(
    {
        "address", "api_key", "auth_token", "authorization", "body", "content", "data",
        "email", "from_", "headers", "mail_from", "password", "payload", "phone",
        "rcpt_tos", "recipient", "recipients", "secret", "secrets", "sender", "to",
        "token",
    }
)  # fmt: skip
_PATTERNS = (
    (re.compile(r"(?i)\bbearer\s+[A-Za-z0-9._~+/=-]+"), "Bearer " + REDACTED),
    (re.compile(r"\bwhsec_[A-Za-z0-9+/=_-]+"), REDACTED),
    (re.compile(r"(?i)(://)[^/\s:@]+:[^/\s@]+@"), r"\1" + REDACTED + "@"),
    (
        re.compile(
            r"(?i)\b(password|passwd|secret|token|api_key|auth_token)=[^\s&,;]+"
        ),
        r"\1=" + REDACTED,
    ),
    (
        re.compile(
            r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"
        ),
        "[email]",
    ),
    (re.compile(r"(?<![\w+])\+[1-9]\d{6,14}\b"), "[phone]"),
)

#: Every pattern above needs one of these: most text is returned after one scan.
_MAYBE = re.compile(r"[@+=_]|(?i:bearer)")


def scrub(text: str) -> str:
    """``text`` without e-mail addresses, E.164 numbers, bearer tokens or secrets."""
    if _MAYBE.search(text) is None:
        return text
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def _redact_value(value: Any, depth: int = 0) -> Any:
    if isinstance(value, str):
        return scrub(value)
    if depth > 4:  # noqa: PLR2004 - deep enough for any structure a log line carries
        return REDACTED
    if isinstance(value, Mapping):
        return {
            k: REDACTED
            if str(k).lower() in SENSITIVE_KEYS
            else _redact_value(v, depth + 1)
            for k, v in value.items()
        }
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_redact_value(v, depth + 1) for v in value]
    if isinstance(value, (bytes, bytearray)):
        return REDACTED
    if value is None or isinstance(value, (bool, int, float)):
        return value
    return scrub(str(value))


def redact(
    _logger: object, _name: str, event_dict: structlog.typing.EventDict
) -> structlog.typing.EventDict:
    """Redact sensitive fields by name and sensitive text anywhere (the last processor
    before rendering, so tracebacks are covered too)."""
    for key, value in event_dict.items():
        if key.lower() in SENSITIVE_KEYS:
            event_dict[key] = REDACTED
        elif not (value is None or isinstance(value, (bool, int, float))):
            event_dict[key] = _redact_value(value)
    return event_dict


def add_trace_ids(
    _logger: object, _name: str, event_dict: structlog.typing.EventDict
) -> structlog.typing.EventDict:
    """The current span's trace and span ids (W3C hex), when a span is recording."""
    ctx = trace.get_current_span().get_span_context()
    if ctx.is_valid:
        event_dict.setdefault("trace_id", format(ctx.trace_id, "032x"))
        event_dict.setdefault("span_id", format(ctx.span_id, "016x"))
    return event_dict


def configure_logging(
    level: str = "info", fmt: Literal["json", "console"] = "json"
) -> None:
    """Configure structlog and route the libraries' stdlib logs through the same renderer."""
    numeric = logging.getLevelName(level.upper())
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        add_trace_ids,
        _cap_values,
    ]
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, redact, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                redact,
                renderer,
            ],
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    # Libraries log connection trouble at WARNING; their INFO/DEBUG may carry message bodies.
    root.setLevel(max(numeric, logging.WARNING))
