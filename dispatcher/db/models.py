"""The schema, as SQLAlchemy 2 tables; Alembic migrations must agree (``alembic check``)."""

from datetime import datetime
from typing import Any
from uuid import UUID

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Identity,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    Text,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from dispatcher.db.states import DeliveryStatus

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    # SQLAlchemy reads it from the class.
    type_annotation_map = {dict[str, Any]: JSONB, datetime: DateTime(timezone=True)}  # noqa: RUF012


class Event(Base):
    """One accepted event, stored before its broker message is acked."""

    __tablename__ = "events"

    id: Mapped[UUID] = mapped_column(primary_key=True)
    schema_version: Mapped[int] = mapped_column(SmallInteger)
    type: Mapped[str] = mapped_column(Text)
    severity: Mapped[str] = mapped_column(Text)
    occurred_at: Mapped[datetime]
    received_at: Mapped[datetime] = mapped_column(server_default=func.now())
    subject_id: Mapped[str] = mapped_column(Text)
    correlation_id: Mapped[str | None] = mapped_column(Text)
    #: The whole validated envelope as canonical JSON; PII lives here and in recipients.
    payload: Mapped[dict[str, Any]]
    digest: Mapped[bytes] = mapped_column(LargeBinary)
    traceparent: Mapped[str | None] = mapped_column(Text)
    tracestate: Mapped[str | None] = mapped_column(Text)
    delivery_count: Mapped[int] = mapped_column(SmallInteger)

    __table_args__ = (
        CheckConstraint(
            "severity IN ('critical','high','medium','low','info')", name="severity"
        ),
        Index(None, "received_at"),
        Index(None, "occurred_at"),
        Index(None, "type", "received_at"),
        Index(None, "subject_id", "received_at"),
        Index(None, "severity", "received_at"),
        Index(
            None, "correlation_id", postgresql_where=text("correlation_id IS NOT NULL")
        ),
    )


class Delivery(Base):
    """One message to one recipient on one channel: the outbox row and its state."""

    __tablename__ = "deliveries"

    id: Mapped[UUID] = mapped_column(primary_key=True)
    event_id: Mapped[UUID] = mapped_column(ForeignKey("events.id", ondelete="RESTRICT"))
    channel: Mapped[str] = mapped_column(Text)
    #: Address, E.164 number or endpoint name: PII, masked by the audit API.
    recipient: Mapped[str] = mapped_column(Text)
    #: The routing rule that added it; NULL when the event named the recipient.
    rule: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str] = mapped_column(
        Text, server_default=DeliveryStatus.PENDING.value
    )
    #: 0 (critical) .. 4 (info); claimed in this order.
    priority: Mapped[int] = mapped_column(SmallInteger)
    attempts: Mapped[int] = mapped_column(Integer, server_default="0")
    #: Pending: when it may next be tried. In flight: when its lease expires.
    next_attempt_at: Mapped[datetime] = mapped_column(server_default=func.now())
    #: Fencing token of the current claim: a late result from an older claim is ignored.
    lease_token: Mapped[UUID | None]
    lease_owner: Mapped[str | None] = mapped_column(Text)
    last_error_class: Mapped[str | None] = mapped_column(Text)
    last_error_message: Mapped[str | None] = mapped_column(Text)
    last_provider: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(server_default=func.now())
    delivered_at: Mapped[datetime | None]
    dead_at: Mapped[datetime | None]
    #: When the broker confirmed this dead letter's message in the RabbitMQ mirror.
    mirrored_at: Mapped[datetime | None]
    traceparent: Mapped[str | None] = mapped_column(Text)
    #: HMAC of the recipient under ``api.recipient_hash_key`` (``events/blind_index.py``):
    #: the audit API finds deliveries by recipient through it; NULL without a key.
    recipient_hash: Mapped[bytes | None] = mapped_column(LargeBinary)
    #: The replay that last requeued it; its attempts since then carry it too.
    replay_id: Mapped[UUID | None] = mapped_column(
        ForeignKey("replays.id", ondelete="RESTRICT")
    )

    __table_args__ = (
        CheckConstraint(
            "status IN ('pending','in_flight','delivered','dead','discarded')",
            name="status",
        ),
        CheckConstraint("channel IN ('email','sms','webhook')", name="channel"),
        Index(None, "event_id", "channel", "recipient", unique=True),
        Index(
            "ix_deliveries_claimable",
            "channel",
            "priority",
            "next_attempt_at",
            postgresql_where=text("status IN ('pending','in_flight')"),
        ),
        # Webhook claims visit each endpoint with room (``outbox/claims.py``): a blocked
        # endpoint's backlog is never read.
        Index(
            "ix_deliveries_webhook_lanes",
            "recipient",
            "priority",
            "next_attempt_at",
            postgresql_where=text(
                "channel = 'webhook' AND status IN ('pending','in_flight')"
            ),
        ),
        # Dead letters the RabbitMQ mirror has not confirmed yet (delivery/mirror.py).
        Index(
            "ix_deliveries_unmirrored",
            "dead_at",
            postgresql_where=text("status = 'dead' AND mirrored_at IS NULL"),
        ),
        Index(
            "ix_deliveries_dead",
            "channel",
            "dead_at",
            postgresql_where=text("status = 'dead'"),
        ),
        # The audit API: "events with a dead delivery" probes this per event, and dead
        # deliveries list newest first from it (migration 0006).
        Index(
            "ix_deliveries_dead_event_id",
            "event_id",
            postgresql_where=text("status = 'dead'"),
        ),
        Index(
            "ix_deliveries_dead_created_at",
            "created_at",
            "id",
            postgresql_where=text("status = 'dead'"),
        ),
        # The audit API lists deliveries newest first, alone or by channel or recipient.
        Index("ix_deliveries_created_at", "created_at", "id"),
        Index("ix_deliveries_channel_created_at", "channel", "created_at"),
        Index(
            "ix_deliveries_recipient_hash",
            "recipient_hash",
            "created_at",
            postgresql_where=text("recipient_hash IS NOT NULL"),
        ),
        # Room on each page for a delivery's next version (its claim, its outcome): state
        # changes are never HOT (status is in the claim index), but they stay on the
        # row's page (migration 0009).
        {"postgresql_with": {"fillfactor": 80}},
    )


class DeliveryAttempt(Base):
    """One try of one delivery, successful or not."""

    __tablename__ = "delivery_attempts"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    delivery_id: Mapped[UUID] = mapped_column(
        ForeignKey("deliveries.id", ondelete="RESTRICT")
    )
    attempt: Mapped[int] = mapped_column(Integer)
    provider: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[datetime]
    finished_at: Mapped[datetime]
    #: delivered | failed | deferred
    outcome: Mapped[str] = mapped_column(Text)
    error_class: Mapped[str | None] = mapped_column(Text)
    error_message: Mapped[str | None] = mapped_column(Text)
    provider_code: Mapped[str | None] = mapped_column(Text)
    latency_ms: Mapped[float | None]
    #: initial | retry | replay: how this attempt came about.
    lineage: Mapped[str] = mapped_column(Text, server_default="initial")
    #: The replay that requeued the delivery before this attempt, if any.
    replay_id: Mapped[UUID | None]

    __table_args__ = (
        Index(None, "delivery_id", "attempt"),
        Index(None, "started_at"),
        CheckConstraint("lineage IN ('initial','retry','replay')", name="lineage"),
    )


class AuditEntry(Base):
    """Append-only log of what happened; a trigger refuses UPDATE and DELETE."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    at: Mapped[datetime] = mapped_column(server_default=func.now())
    kind: Mapped[str] = mapped_column(Text)
    event_id: Mapped[UUID | None]
    delivery_id: Mapped[UUID | None]
    #: Ids, counts, codes: never payloads, addresses or numbers.
    detail: Mapped[dict[str, Any]] = mapped_column(server_default=text("'{}'::jsonb"))

    __table_args__ = (
        Index(None, "event_id", postgresql_where=text("event_id IS NOT NULL")),
        Index(None, "delivery_id", postgresql_where=text("delivery_id IS NOT NULL")),
        Index(None, "kind", "at"),
        Index(None, "at"),
    )


class RejectedMessage(Base):
    """A message that was not a valid event, kept with its reason so nothing is lost."""

    __tablename__ = "rejected_messages"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    received_at: Mapped[datetime] = mapped_column(server_default=func.now())
    #: ingest | ingest_dlq
    source: Mapped[str] = mapped_column(Text)
    reason: Mapped[str] = mapped_column(Text)
    message: Mapped[str] = mapped_column(Text)
    #: The body, cut at the size limit.
    body: Mapped[bytes] = mapped_column(LargeBinary)
    body_size: Mapped[int] = mapped_column(Integer)
    headers: Mapped[dict[str, Any]] = mapped_column(server_default=text("'{}'::jsonb"))
    routing_key: Mapped[str | None] = mapped_column(Text)
    message_id: Mapped[str | None] = mapped_column(Text)
    #: When ``dispatcher rejected replay`` read it again and ingest accepted it.
    replayed_at: Mapped[datetime | None]
    #: The event it became (or that was already stored under its event_id).
    replayed_event_id: Mapped[UUID | None]
    #: The reasons it had before a replay failed it again with another:
    #: ``[{"reason", "message", "until", "replay_reason"}]``, oldest first.
    earlier_reasons: Mapped[list[dict[str, Any]]] = mapped_column(
        JSONB, server_default=text("'[]'::jsonb")
    )

    __table_args__ = (
        Index(None, "reason", "received_at"),
        Index(None, "received_at"),
        # What is still rejected: listed and replayed (``ingest/rejected.py``).
        Index(
            "ix_rejected_messages_open",
            "received_at",
            postgresql_where=text("replayed_at IS NULL"),
        ),
    )


class Replay(Base):
    """A replay of dead letters: a durable job, its delivery set frozen at creation."""

    __tablename__ = "replays"

    id: Mapped[UUID] = mapped_column(primary_key=True)
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    #: The API token's name or the OS user who created it.
    created_by: Mapped[str] = mapped_column(Text)
    reason: Mapped[str] = mapped_column(Text)
    #: The filters it was planned with (``outbox/dead.py: DeadFilter``), for the record.
    filters: Mapped[dict[str, Any]]
    status: Mapped[str] = mapped_column(Text, server_default="planned")
    total: Mapped[int] = mapped_column(Integer, server_default="0")
    requeued: Mapped[int] = mapped_column(Integer, server_default="0")
    delivered: Mapped[int] = mapped_column(Integer, server_default="0")
    failed_again: Mapped[int] = mapped_column(Integer, server_default="0")
    skipped: Mapped[int] = mapped_column(Integer, server_default="0")
    #: Deliveries requeued per second at most.
    rate: Mapped[float]
    #: Events older than this many seconds are skipped; NULL: no horizon.
    max_age_seconds: Mapped[float | None]
    finished_at: Mapped[datetime | None]
    updated_at: Mapped[datetime] = mapped_column(server_default=func.now())
    #: The runner holding it and until when (like a delivery's lease).
    lease_owner: Mapped[str | None] = mapped_column(Text)
    lease_expires_at: Mapped[datetime | None]

    __table_args__ = (
        CheckConstraint(
            "status IN ('planned','running','paused','cancelled','done','failed')",
            name="status",
        ),
        Index(
            "ix_replays_active",
            "created_at",
            postgresql_where=text("status IN ('planned','running','paused')"),
        ),
        Index(None, "created_at"),
    )


class ReplayItem(Base):
    """One delivery of a replay's frozen set and what the replay did with it."""

    __tablename__ = "replay_items"

    replay_id: Mapped[UUID] = mapped_column(
        ForeignKey("replays.id", ondelete="RESTRICT"), primary_key=True
    )
    delivery_id: Mapped[UUID] = mapped_column(
        ForeignKey("deliveries.id", ondelete="RESTRICT"), primary_key=True
    )
    state: Mapped[str] = mapped_column(Text, server_default="waiting")
    #: Why it was skipped.
    reason: Mapped[str | None] = mapped_column(Text)
    decided_at: Mapped[datetime | None]
    #: Its place in the replay, most urgent first (priority, dead_at), set at the freeze.
    ordinal: Mapped[int | None] = mapped_column(BigInteger)

    __table_args__ = (
        CheckConstraint(
            "state IN ('waiting','requeued','skipped','delivered','failed_again')",
            name="state",
        ),
        Index(None, "replay_id", "state"),
        # A delivery waits in one replay at most: overlapping replays replay it once.
        Index(
            "ix_replay_items_waiting",
            "delivery_id",
            unique=True,
            postgresql_where=text("state = 'waiting'"),
        ),
        Index(None, "delivery_id"),
        # The requeue step walks a replay's waiting items in order, reading only its batch.
        Index(
            "ix_replay_items_order",
            "replay_id",
            "ordinal",
            postgresql_where=text("state = 'waiting'"),
        ),
    )
