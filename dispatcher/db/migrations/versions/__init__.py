"""One module per revision; Alembic loads them by file, not by import."""
