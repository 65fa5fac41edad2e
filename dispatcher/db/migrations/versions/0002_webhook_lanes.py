"""webhook rows claimable per endpoint

A webhook claim visits each endpoint that has room through this index instead of reading
one channel-wide queue, so an endpoint whose breaker is open, or which is at its in-flight
cap, costs a claim nothing however large its backlog (docs/delivery.md, "Claims").

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23 09:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_WHERE = sa.text("channel = 'webhook' AND status IN ('pending','in_flight')")


def upgrade() -> None:
    # Partial: only webhook rows still to deliver, a small index however long the history.
    # IF NOT EXISTS: on a large table operators may build it CONCURRENTLY beforehand
    # (docs/operations.md, "Upgrades").
    op.create_index(
        "ix_deliveries_webhook_lanes",
        "deliveries",
        ["recipient", "priority", "next_attempt_at"],
        unique=False,
        postgresql_where=_WHERE,
        if_not_exists=True,
    )


def downgrade() -> None:
    op.drop_index(
        "ix_deliveries_webhook_lanes",
        table_name="deliveries",
        postgresql_where=_WHERE,
    )
