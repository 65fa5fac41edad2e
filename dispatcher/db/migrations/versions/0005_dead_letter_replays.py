"""dead letters can be replayed and discarded: replays, their frozen items, lineage

A ``replays`` row is a durable job with its delivery set frozen in ``replay_items`` when
it is created; a delivery waits in one replay at most (``ix_replay_items_waiting``).
Deliveries remember the replay that requeued them and every attempt says how it came
about (initial, retry, replay). ``discarded`` is a final status for dead letters an
operator decided not to send: kept, never deleted.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-25 10:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ACTIVE = sa.text("status IN ('planned','running','paused')")
_WAITING = sa.text("state = 'waiting'")
_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "replays",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("created_at", _TS, server_default=sa.func.now(), nullable=False),
        sa.Column("created_by", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("filters", postgresql.JSONB(), nullable=False),
        sa.Column("status", sa.Text(), server_default="planned", nullable=False),
        sa.Column("total", sa.Integer(), server_default="0", nullable=False),
        sa.Column("requeued", sa.Integer(), server_default="0", nullable=False),
        sa.Column("delivered", sa.Integer(), server_default="0", nullable=False),
        sa.Column("failed_again", sa.Integer(), server_default="0", nullable=False),
        sa.Column("skipped", sa.Integer(), server_default="0", nullable=False),
        sa.Column("rate", sa.Float(), nullable=False),
        sa.Column("max_age_seconds", sa.Float(), nullable=True),
        sa.Column("finished_at", _TS, nullable=True),
        sa.Column("updated_at", _TS, server_default=sa.func.now(), nullable=False),
        sa.Column("lease_owner", sa.Text(), nullable=True),
        sa.Column("lease_expires_at", _TS, nullable=True),
        sa.CheckConstraint(
            "status IN ('planned','running','paused','cancelled','done','failed')",
            name=op.f("ck_replays_status"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_replays")),
    )
    op.create_index(
        "ix_replays_active", "replays", ["created_at"], postgresql_where=_ACTIVE
    )
    op.create_index(op.f("ix_replays_created_at"), "replays", ["created_at"])
    op.create_table(
        "replay_items",
        sa.Column("replay_id", sa.Uuid(), nullable=False),
        sa.Column("delivery_id", sa.Uuid(), nullable=False),
        sa.Column("state", sa.Text(), server_default="waiting", nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("decided_at", _TS, nullable=True),
        sa.CheckConstraint(
            "state IN ('waiting','requeued','skipped','delivered','failed_again')",
            name=op.f("ck_replay_items_state"),
        ),
        sa.ForeignKeyConstraint(
            ["delivery_id"],
            ["deliveries.id"],
            name=op.f("fk_replay_items_delivery_id_deliveries"),
            ondelete="RESTRICT",
        ),
        sa.ForeignKeyConstraint(
            ["replay_id"],
            ["replays.id"],
            name=op.f("fk_replay_items_replay_id_replays"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint(
            "replay_id", "delivery_id", name=op.f("pk_replay_items")
        ),
    )
    op.create_index(
        op.f("ix_replay_items_replay_id"), "replay_items", ["replay_id", "state"]
    )
    op.create_index(
        op.f("ix_replay_items_delivery_id"), "replay_items", ["delivery_id"]
    )
    op.create_index(
        "ix_replay_items_waiting",
        "replay_items",
        ["delivery_id"],
        unique=True,
        postgresql_where=_WAITING,
    )
    op.add_column("deliveries", sa.Column("replay_id", sa.Uuid(), nullable=True))
    op.create_foreign_key(
        op.f("fk_deliveries_replay_id_replays"),
        "deliveries",
        "replays",
        ["replay_id"],
        ["id"],
        ondelete="RESTRICT",
    )
    op.drop_constraint(op.f("ck_deliveries_status"), "deliveries", type_="check")
    op.create_check_constraint(
        op.f("ck_deliveries_status"),
        "deliveries",
        "status IN ('pending','in_flight','delivered','dead','discarded')",
    )
    op.add_column(
        "delivery_attempts",
        sa.Column("lineage", sa.Text(), server_default="initial", nullable=False),
    )
    op.add_column("delivery_attempts", sa.Column("replay_id", sa.Uuid(), nullable=True))
    op.execute("UPDATE delivery_attempts SET lineage = 'retry' WHERE attempt > 1")
    op.create_check_constraint(
        op.f("ck_delivery_attempts_lineage"),
        "delivery_attempts",
        "lineage IN ('initial','retry','replay')",
    )


def downgrade() -> None:
    op.drop_constraint(
        op.f("ck_delivery_attempts_lineage"), "delivery_attempts", "check"
    )
    op.drop_column("delivery_attempts", "replay_id")
    op.drop_column("delivery_attempts", "lineage")
    op.drop_constraint(op.f("ck_deliveries_status"), "deliveries", type_="check")
    op.execute("UPDATE deliveries SET status = 'dead' WHERE status = 'discarded'")
    op.create_check_constraint(
        op.f("ck_deliveries_status"),
        "deliveries",
        "status IN ('pending','in_flight','delivered','dead')",
    )
    op.drop_constraint(
        op.f("fk_deliveries_replay_id_replays"), "deliveries", "foreignkey"
    )
    op.drop_column("deliveries", "replay_id")
    op.drop_table("replay_items")
    op.drop_table("replays")
