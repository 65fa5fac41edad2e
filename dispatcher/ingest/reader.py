"""Reading one message: its body parsed and its event routed, as an ``Incoming``.

The one place a body becomes an event or a rejection: the consumer reads every broker
message with it, and ``dispatcher rejected replay`` reads stored rejected bodies with it
again once their cause is fixed.
"""

from collections.abc import Collection, Mapping, Sequence
from typing import Any

from dispatcher.events.parse import ParsedEvent, parse_event
from dispatcher.events.rejection import Rejection, RejectReason
from dispatcher.events.routing import RoutingRule, route
from dispatcher.ingest.incoming import Accepted, Incoming, Source


class MessageReader:
    """Parses and routes message bodies under one configuration."""

    __slots__ = ("_endpoint_filters", "_endpoints", "_max_body", "_rules")

    def __init__(
        self,
        *,
        max_body_bytes: int,
        rules: Sequence[RoutingRule],
        endpoint_filters: dict[str, Sequence[str]],
    ) -> None:
        self._max_body = max_body_bytes
        self._rules = rules
        self._endpoint_filters = endpoint_filters
        self._endpoints: Collection[str] = frozenset(endpoint_filters)

    def read(
        self,
        body: bytes,
        source: Source,
        routing_key: str | None,
        message_id: str | None,
        headers: Mapping[str, Any] | None,
    ) -> Incoming:
        """Parse and route one message; pure. Never raises: a message that is never
        committed would hold back the acks of all after it."""
        outcome: Accepted | Rejection
        try:
            parsed = parse_event(
                body, max_bytes=self._max_body, endpoints=self._endpoints
            )
            if isinstance(parsed, ParsedEvent):
                event = parsed.event
                routes = route(
                    event.type,
                    event.severity,
                    event.recipients,
                    self._rules,
                    self._endpoint_filters,
                )
                outcome = Accepted(parsed, routes)
            else:
                outcome = parsed
        except Exception as exc:  # noqa: BLE001 - a bug must not lose the message
            outcome = Rejection(
                RejectReason.INTERNAL_ERROR, f"routing error: {type(exc).__name__}"
            )
        return Incoming(
            body=body,
            outcome=outcome,
            source=source,
            routing_key=routing_key,
            message_id=message_id,
            headers=headers or {},
        )
