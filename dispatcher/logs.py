"""Structured logs: one JSON object per line, ids only (never payloads, addresses or numbers)."""

import logging
import sys
from typing import Literal

import structlog

#: Longest string value a log line carries; user-controlled text is cut (log-injection safety).
MAX_VALUE_LENGTH = 256


def _cap_values(
    _logger: object, _name: str, event_dict: structlog.typing.EventDict
) -> structlog.typing.EventDict:
    for key, value in event_dict.items():
        if isinstance(value, str) and len(value) > MAX_VALUE_LENGTH:
            event_dict[key] = value[:MAX_VALUE_LENGTH] + "…"
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
        _cap_values,
    ]
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                renderer,
            ],
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    # Libraries log connection trouble at WARNING; their INFO/DEBUG may carry message bodies.
    root.setLevel(max(numeric, logging.WARNING))
