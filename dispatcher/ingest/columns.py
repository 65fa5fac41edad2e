"""One ingest batch's rows as column arrays: the parameters of its one write statement.

Each class collects one table's rows (events, deliveries, audit entries, rejected
messages) column by column, so the statement in ``ingest/store.py`` unnests them in one
round trip whatever the batch's size.
"""

import json
from collections.abc import Sequence
from typing import Any
from uuid import UUID

from dispatcher.db.sql import from_row
from dispatcher.db.states import AuditKind
from dispatcher.events.blind_index import recipient_digest
from dispatcher.events.rejection import Rejection
from dispatcher.ingest.incoming import Accepted, Incoming
from dispatcher.outbox.claims import Claimed
from dispatcher.outbox.handoff import Offer


def event_params(pairs: Any, traceparent: str | None = None) -> dict[str, list[Any]]:
    """Column arrays of the events ``pairs`` (item, accepted); ``traceparent`` stands for
    an item that carries none (the ingest span's)."""
    cols: dict[str, list[Any]] = {
        k: []
        for k in (
            "ids",
            "types",
            "severities",
            "occurred",
            "subjects",
            "correlations",
            "payloads",
            "digests",
            "traceparents",
            "tracestates",
            "delivery_counts",
        )
    }
    for item, acc in pairs:
        event = acc.parsed.event
        cols["ids"].append(event.event_id)
        cols["types"].append(event.type)
        cols["severities"].append(event.severity.value)
        cols["occurred"].append(event.occurred_at)
        cols["subjects"].append(event.subject.id)
        cols["correlations"].append(event.correlation_id)
        cols["payloads"].append(acc.parsed.canonical)
        cols["digests"].append(acc.parsed.digest)
        cols["traceparents"].append(item.traceparent or traceparent)
        cols["tracestates"].append(item.tracestate)
        cols["delivery_counts"].append(len(acc.routes))
    return cols


class DeliveryRows:
    __slots__ = (
        "channels",
        "event_ids",
        "hashes",
        "key",
        "priorities",
        "recipients",
        "rules",
        "traceparent",
        "traceparents",
    )

    def __init__(self, key: bytes | None, traceparent: str | None = None) -> None:
        self.key = key
        #: For an event that carries no ``traceparent``: the ingest span's.
        self.traceparent = traceparent
        self.hashes: list[bytes | None] = []
        self.event_ids: list[UUID] = []
        self.channels: list[str] = []
        self.recipients: list[str] = []
        self.rules: list[str | None] = []
        self.priorities: list[int] = []
        self.traceparents: list[str | None] = []

    def add(self, acc: Accepted, item: Incoming) -> None:
        event = acc.parsed.event
        priority = event.severity.priority
        traceparent = item.traceparent or self.traceparent
        for r in acc.routes:
            self.event_ids.append(event.event_id)
            self.channels.append(r.channel.value)
            self.recipients.append(r.to)
            self.rules.append(r.rule)
            self.priorities.append(priority)
            self.traceparents.append(traceparent)
            self.hashes.append(
                None
                if self.key is None
                else recipient_digest(self.key, r.channel, r.to)
            )

    def offers(self) -> list[Offer]:
        return [
            Offer(c, r, p)
            for c, r, p in zip(
                self.channels, self.recipients, self.priorities, strict=True
            )
        ]

    def leased(self, rows: Sequence[Any]) -> list[tuple[int, Claimed]]:
        """The rows the insert leased, each with its position among the offers (an
        event's recipients are distinct on each channel)."""
        position = {
            key: n
            for n, key in enumerate(
                zip(self.event_ids, self.channels, self.recipients, strict=True)
            )
        }
        return [
            (
                position[r["event_id"], r["channel"], r["recipient"]],
                from_row(Claimed, r),
            )
            for r in rows
            if r["id"] is not None
        ]

    def params(self) -> dict[str, list[Any]]:
        return {
            "d_events": self.event_ids,
            "d_channels": self.channels,
            "d_recipients": self.recipients,
            "d_rules": self.rules,
            "d_priorities": self.priorities,
            "d_traceparents": self.traceparents,
            "d_recipient_hashes": self.hashes,
        }


class AuditRows:
    __slots__ = ("details", "event_ids", "kinds")

    def __init__(self) -> None:
        self.kinds: list[str] = []
        self.event_ids: list[UUID | None] = []
        self.details: list[str] = []

    def add(
        self, kind: AuditKind, event_id: UUID | None, detail: dict[str, Any]
    ) -> None:
        self.kinds.append(kind.value)
        self.event_ids.append(event_id)
        self.details.append(json.dumps(detail))

    def params(self) -> dict[str, list[Any]]:
        return {
            "a_kinds": self.kinds,
            "a_events": self.event_ids,
            "a_details": self.details,
        }


class RejectedRows:
    __slots__ = (
        "bodies",
        "headers",
        "max_body",
        "message_ids",
        "messages",
        "reasons",
        "routing_keys",
        "sizes",
        "sources",
    )

    def __init__(self, max_body: int) -> None:
        self.max_body = max_body
        self.sources: list[str] = []
        self.reasons: list[str] = []
        self.messages: list[str] = []
        self.bodies: list[bytes] = []
        self.sizes: list[int] = []
        self.headers: list[str] = []
        self.routing_keys: list[str | None] = []
        self.message_ids: list[str | None] = []

    def add(self, item: Incoming, rejection: Rejection) -> None:
        self.sources.append(item.source.value)
        self.reasons.append(rejection.reason.value)
        self.messages.append(rejection.message)
        self.bodies.append(item.body[: self.max_body])
        self.sizes.append(len(item.body))
        self.headers.append(item.headers_json())
        self.routing_keys.append(_clean(item.routing_key))
        self.message_ids.append(_clean(item.message_id))

    def params(self) -> dict[str, list[Any]]:
        return {
            "r_sources": self.sources,
            "r_reasons": self.reasons,
            "r_messages": self.messages,
            "r_bodies": self.bodies,
            "r_sizes": self.sizes,
            "r_headers": self.headers,
            "r_routing_keys": self.routing_keys,
            "r_message_ids": self.message_ids,
        }


def _clean(value: str | None) -> str | None:
    return None if value is None else value[:256].replace("\x00", "\ufffd")
