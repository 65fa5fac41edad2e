"""a replay's items carry their order, so a requeue step reads only its batch

``replay_items.ordinal`` is the item's place in its replay, most urgent first (delivery
priority, then dead_at), fixed when the set is frozen; ``ix_replay_items_order`` walks a
replay's waiting items in that order. Before, every requeue statement joined and sorted
the replay's whole waiting set to take its batch (docs/benchmarks.md, "Dead-letter
replay"). Items frozen before this migration have no ordinal and come last.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03 21:45:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("replay_items", sa.Column("ordinal", sa.BigInteger(), nullable=True))
    op.create_index(
        "ix_replay_items_order",
        "replay_items",
        ["replay_id", "ordinal"],
        postgresql_where=sa.text("state = 'waiting'"),
    )


def downgrade() -> None:
    op.drop_index("ix_replay_items_order", table_name="replay_items")
    op.drop_column("replay_items", "ordinal")
