"""deliveries carry a recipient hash; indexes for the audit API's listings

``recipient_hash`` is the keyed HMAC of the recipient that ingest writes when
``api.recipient_hash_key`` is set, so the audit API finds deliveries by recipient without a
searchable clear-text column. The indexes let every list query of the API walk an index in
its order (newest first) instead of sorting the table.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-24 09:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_HASHED = sa.text("recipient_hash IS NOT NULL")


def upgrade() -> None:
    # IF NOT EXISTS throughout: operators of a large outbox may add the column and build
    # the indexes CONCURRENTLY beforehand (docs/operations.md, "Upgrades").
    op.add_column(
        "deliveries",
        sa.Column("recipient_hash", sa.LargeBinary(), nullable=True),
        if_not_exists=True,
    )
    op.create_index(
        "ix_deliveries_created_at",
        "deliveries",
        ["created_at", "id"],
        unique=False,
        if_not_exists=True,
    )
    op.create_index(
        "ix_deliveries_channel_created_at",
        "deliveries",
        ["channel", "created_at"],
        unique=False,
        if_not_exists=True,
    )
    op.create_index(
        "ix_deliveries_recipient_hash",
        "deliveries",
        ["recipient_hash", "created_at"],
        unique=False,
        postgresql_where=_HASHED,
        if_not_exists=True,
    )


def downgrade() -> None:
    op.drop_index(
        "ix_deliveries_recipient_hash",
        table_name="deliveries",
        postgresql_where=_HASHED,
    )
    op.drop_index("ix_deliveries_channel_created_at", table_name="deliveries")
    op.drop_index("ix_deliveries_created_at", table_name="deliveries")
    op.drop_column("deliveries", "recipient_hash")
