"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-23 06:05:30.230516
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "audit_log",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column(
            "at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("event_id", sa.Uuid(), nullable=True),
        sa.Column("delivery_id", sa.Uuid(), nullable=True),
        sa.Column(
            "detail",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_log")),
    )
    op.create_index(op.f("ix_audit_log_at"), "audit_log", ["at"], unique=False)
    op.create_index(
        op.f("ix_audit_log_delivery_id"),
        "audit_log",
        ["delivery_id"],
        unique=False,
        postgresql_where=sa.text("delivery_id IS NOT NULL"),
    )
    op.create_index(
        op.f("ix_audit_log_event_id"),
        "audit_log",
        ["event_id"],
        unique=False,
        postgresql_where=sa.text("event_id IS NOT NULL"),
    )
    op.create_index(
        op.f("ix_audit_log_kind"), "audit_log", ["kind", "at"], unique=False
    )
    op.create_table(
        "events",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("schema_version", sa.SmallInteger(), nullable=False),
        sa.Column("type", sa.Text(), nullable=False),
        sa.Column("severity", sa.Text(), nullable=False),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column(
            "received_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("subject_id", sa.Text(), nullable=False),
        sa.Column("correlation_id", sa.Text(), nullable=True),
        sa.Column("payload", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("digest", sa.LargeBinary(), nullable=False),
        sa.Column("traceparent", sa.Text(), nullable=True),
        sa.Column("tracestate", sa.Text(), nullable=True),
        sa.Column("delivery_count", sa.SmallInteger(), nullable=False),
        sa.CheckConstraint(
            "severity IN ('critical','high','medium','low','info')",
            name=op.f("ck_events_severity"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_events")),
    )
    op.create_index(
        op.f("ix_events_correlation_id"),
        "events",
        ["correlation_id"],
        unique=False,
        postgresql_where=sa.text("correlation_id IS NOT NULL"),
    )
    op.create_index(
        op.f("ix_events_occurred_at"), "events", ["occurred_at"], unique=False
    )
    op.create_index(
        op.f("ix_events_received_at"), "events", ["received_at"], unique=False
    )
    op.create_index(
        op.f("ix_events_severity"), "events", ["severity", "received_at"], unique=False
    )
    op.create_index(
        op.f("ix_events_subject_id"),
        "events",
        ["subject_id", "received_at"],
        unique=False,
    )
    op.create_index(
        op.f("ix_events_type"), "events", ["type", "received_at"], unique=False
    )
    op.create_table(
        "rejected_messages",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column(
            "received_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("body", sa.LargeBinary(), nullable=False),
        sa.Column("body_size", sa.Integer(), nullable=False),
        sa.Column(
            "headers",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
        sa.Column("routing_key", sa.Text(), nullable=True),
        sa.Column("message_id", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rejected_messages")),
    )
    op.create_index(
        op.f("ix_rejected_messages_reason"),
        "rejected_messages",
        ["reason", "received_at"],
        unique=False,
    )
    op.create_index(
        op.f("ix_rejected_messages_received_at"),
        "rejected_messages",
        ["received_at"],
        unique=False,
    )
    op.create_table(
        "deliveries",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("event_id", sa.Uuid(), nullable=False),
        sa.Column("channel", sa.Text(), nullable=False),
        sa.Column("recipient", sa.Text(), nullable=False),
        sa.Column("rule", sa.Text(), nullable=True),
        sa.Column("status", sa.Text(), server_default="pending", nullable=False),
        sa.Column("priority", sa.SmallInteger(), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column(
            "next_attempt_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("lease_token", sa.Uuid(), nullable=True),
        sa.Column("lease_owner", sa.Text(), nullable=True),
        sa.Column("last_error_class", sa.Text(), nullable=True),
        sa.Column("last_error_message", sa.Text(), nullable=True),
        sa.Column("last_provider", sa.Text(), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("dead_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("traceparent", sa.Text(), nullable=True),
        sa.CheckConstraint(
            "channel IN ('email','sms','webhook')", name=op.f("ck_deliveries_channel")
        ),
        sa.CheckConstraint(
            "status IN ('pending','in_flight','delivered','dead')",
            name=op.f("ck_deliveries_status"),
        ),
        sa.ForeignKeyConstraint(
            ["event_id"],
            ["events.id"],
            name=op.f("fk_deliveries_event_id_events"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_deliveries")),
    )
    op.create_index(
        "ix_deliveries_claimable",
        "deliveries",
        ["channel", "priority", "next_attempt_at"],
        unique=False,
        postgresql_where=sa.text("status IN ('pending','in_flight')"),
    )
    op.create_index(
        "ix_deliveries_dead",
        "deliveries",
        ["channel", "dead_at"],
        unique=False,
        postgresql_where=sa.text("status = 'dead'"),
    )
    op.create_index(
        op.f("ix_deliveries_event_id"),
        "deliveries",
        ["event_id", "channel", "recipient"],
        unique=True,
    )
    op.create_index(
        op.f("ix_deliveries_status"),
        "deliveries",
        ["status", "updated_at"],
        unique=False,
    )
    op.create_table(
        "delivery_attempts",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("delivery_id", sa.Uuid(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("provider", sa.Text(), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("outcome", sa.Text(), nullable=False),
        sa.Column("error_class", sa.Text(), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("provider_code", sa.Text(), nullable=True),
        sa.Column("latency_ms", sa.Double(), nullable=True),
        sa.ForeignKeyConstraint(
            ["delivery_id"],
            ["deliveries.id"],
            name=op.f("fk_delivery_attempts_delivery_id_deliveries"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_delivery_attempts")),
    )
    op.create_index(
        op.f("ix_delivery_attempts_delivery_id"),
        "delivery_attempts",
        ["delivery_id", "attempt"],
        unique=False,
    )
    op.create_index(
        op.f("ix_delivery_attempts_started_at"),
        "delivery_attempts",
        ["started_at"],
        unique=False,
    )
    # The audit log is append-only: refuse UPDATE and DELETE at the database, not by convention.
    op.execute(
        """
        CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'audit_log is append-only' USING ERRCODE = 'insufficient_privilege';
        END $$
        """
    )
    op.execute(
        "CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE OR TRUNCATE "
        "ON audit_log FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only()"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER audit_log_append_only ON audit_log")
    op.execute("DROP FUNCTION audit_log_append_only()")
    op.drop_index(
        op.f("ix_delivery_attempts_started_at"), table_name="delivery_attempts"
    )
    op.drop_index(
        op.f("ix_delivery_attempts_delivery_id"), table_name="delivery_attempts"
    )
    op.drop_table("delivery_attempts")
    op.drop_index(op.f("ix_deliveries_status"), table_name="deliveries")
    op.drop_index(op.f("ix_deliveries_event_id"), table_name="deliveries")
    op.drop_index(
        "ix_deliveries_dead",
        table_name="deliveries",
        postgresql_where=sa.text("status = 'dead'"),
    )
    op.drop_index(
        "ix_deliveries_claimable",
        table_name="deliveries",
        postgresql_where=sa.text("status IN ('pending','in_flight')"),
    )
    op.drop_table("deliveries")
    op.drop_index(
        op.f("ix_rejected_messages_received_at"), table_name="rejected_messages"
    )
    op.drop_index(op.f("ix_rejected_messages_reason"), table_name="rejected_messages")
    op.drop_table("rejected_messages")
    op.drop_index(op.f("ix_events_type"), table_name="events")
    op.drop_index(op.f("ix_events_subject_id"), table_name="events")
    op.drop_index(op.f("ix_events_severity"), table_name="events")
    op.drop_index(op.f("ix_events_received_at"), table_name="events")
    op.drop_index(op.f("ix_events_occurred_at"), table_name="events")
    op.drop_index(
        op.f("ix_events_correlation_id"),
        table_name="events",
        postgresql_where=sa.text("correlation_id IS NOT NULL"),
    )
    op.drop_table("events")
    op.drop_index(op.f("ix_audit_log_kind"), table_name="audit_log")
    op.drop_index(
        op.f("ix_audit_log_event_id"),
        table_name="audit_log",
        postgresql_where=sa.text("event_id IS NOT NULL"),
    )
    op.drop_index(
        op.f("ix_audit_log_delivery_id"),
        table_name="audit_log",
        postgresql_where=sa.text("delivery_id IS NOT NULL"),
    )
    op.drop_index(op.f("ix_audit_log_at"), table_name="audit_log")
    op.drop_table("audit_log")
