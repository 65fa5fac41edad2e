"""indexes of the dead deliveries alone, for the audit API's dead-letter questions

"Events with a dead delivery" walks events newest first and asks, for each, whether one
of its deliveries is dead: ``ix_deliveries_dead_event_id`` answers that from an index of
the dead deliveries only (index-only, a few pages), instead of reading every delivery of
the event from the table. ``ix_deliveries_dead_created_at`` lists dead deliveries newest
first without walking the delivered ones. Both hold dead rows only, so the outbox's hot
writes (claims, retries, deliveries) never touch them.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03 21:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_DEAD = sa.text("status = 'dead'")


def upgrade() -> None:
    # IF NOT EXISTS: operators of a large outbox may build them CONCURRENTLY beforehand
    # (docs/operations.md, "Upgrades").
    op.create_index(
        "ix_deliveries_dead_event_id",
        "deliveries",
        ["event_id"],
        unique=False,
        postgresql_where=_DEAD,
        if_not_exists=True,
    )
    op.create_index(
        "ix_deliveries_dead_created_at",
        "deliveries",
        ["created_at", "id"],
        unique=False,
        postgresql_where=_DEAD,
        if_not_exists=True,
    )


def downgrade() -> None:
    op.drop_index(
        "ix_deliveries_dead_created_at", table_name="deliveries", postgresql_where=_DEAD
    )
    op.drop_index(
        "ix_deliveries_dead_event_id", table_name="deliveries", postgresql_where=_DEAD
    )
