"""dead letters remember whether the RabbitMQ mirror has them

``mirrored_at`` is set once the broker confirmed a dead letter's mirror message; the mirror
sweeps dead rows without it (a crash between the dead-lettering commit and the publish, a
broker outage) and publishes them again, so the mirror catches up with the database.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23 17:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_WHERE = sa.text("status = 'dead' AND mirrored_at IS NULL")


def upgrade() -> None:
    # IF NOT EXISTS, here and below: operators of a large outbox may add the column and
    # build the index CONCURRENTLY beforehand (docs/operations.md, "Upgrades").
    op.add_column(
        "deliveries",
        sa.Column("mirrored_at", sa.DateTime(timezone=True), nullable=True),
        if_not_exists=True,
    )
    # Dead letters from before this revision were published when they died (or the
    # failure was logged then); do not send them all to the mirror again.
    op.execute("UPDATE deliveries SET mirrored_at = dead_at WHERE status = 'dead'")
    op.create_index(
        "ix_deliveries_unmirrored",
        "deliveries",
        ["dead_at"],
        unique=False,
        postgresql_where=_WHERE,
        if_not_exists=True,
    )


def downgrade() -> None:
    op.drop_index(
        "ix_deliveries_unmirrored", table_name="deliveries", postgresql_where=_WHERE
    )
    op.drop_column("deliveries", "mirrored_at")
