"""cheaper outcome writes: drop the unused ix_deliveries_status, leave room on each page

Every insert into ``deliveries`` and every state change of a delivery (a claim, an
outcome, a retry) writes a new row version and an entry in each index whose predicate the
version meets: a state change can never be a HOT update, since ``status`` and
``next_attempt_at`` are in the claim index's key and predicate (docs/benchmarks.md,
"What the outbox writes per event"). ``ix_deliveries_status`` (status, updated_at) is read
by no query, yet it took an entry on every one of those writes: dropped.

``fillfactor`` 80 leaves a fifth of each new heap page free, so the new version of a
claimed or finished delivery can go on the row's own page (one page locked and dirtied,
no search for free space that contends with ingest's inserts at the table's end). It is a
storage parameter only: existing pages are not rewritten, new ones are filled to 80 %.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03 22:40:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # IF EXISTS: operators of a large outbox may drop it CONCURRENTLY beforehand
    # (docs/operations.md, "Upgrades"); a plain DROP INDEX needs a brief exclusive lock.
    op.drop_index("ix_deliveries_status", table_name="deliveries", if_exists=True)
    op.execute("ALTER TABLE deliveries SET (fillfactor = 80)")


def downgrade() -> None:
    op.execute("ALTER TABLE deliveries RESET (fillfactor)")
    op.create_index(
        "ix_deliveries_status", "deliveries", ["status", "updated_at"], unique=False
    )
