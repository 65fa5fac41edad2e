"""rejected messages can be read again: replayed_at, the event they became, reasons before

``dispatcher rejected replay`` parses a stored body again through ingest once the cause is
fixed. An accepted one gets ``replayed_at`` and ``replayed_event_id`` (the event it became,
or the one already stored under its event_id) and is not offered again; one that still
fails keeps its row with the new reason, the reasons it had before appended to
``earlier_reasons``. The partial index serves listing and replaying what is still open.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03 21:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TABLE = "rejected_messages"


def upgrade() -> None:
    op.add_column(
        _TABLE, sa.Column("replayed_at", sa.DateTime(timezone=True), nullable=True)
    )
    op.add_column(_TABLE, sa.Column("replayed_event_id", sa.Uuid(), nullable=True))
    op.add_column(
        _TABLE,
        sa.Column(
            "earlier_reasons",
            postgresql.JSONB(),
            server_default=sa.text("'[]'::jsonb"),
            nullable=False,
        ),
    )
    op.create_index(
        "ix_rejected_messages_open",
        _TABLE,
        ["received_at"],
        postgresql_where=sa.text("replayed_at IS NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_rejected_messages_open", table_name=_TABLE)
    op.drop_column(_TABLE, "earlier_reasons")
    op.drop_column(_TABLE, "replayed_event_id")
    op.drop_column(_TABLE, "replayed_at")
