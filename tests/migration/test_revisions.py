"""db/revisions.py reads the same head as Alembic, without importing it."""

from pathlib import Path

import pytest
from alembic.script import ScriptDirectory

from dispatcher.db import revisions
from dispatcher.db.migrate import alembic_config
from dispatcher.errors import DispatcherError


def test_head_is_alembics() -> None:
    """The head read from the migration files is the one Alembic computes."""
    assert (
        revisions.head()
        == ScriptDirectory.from_config(alembic_config()).get_current_head()
    )


def _write(versions: Path, revision: str, down: str) -> None:
    (versions / f"{revision}_x.py").write_text(
        f'"""x"""\n\nrevision: str = "{revision}"\ndown_revision: str | None = {down}\n'
    )


def test_branched_migrations_are_an_error(tmp_path: Path) -> None:
    """Two revisions that follow the same one are two heads: an error, as in Alembic;
    a merge revision (a tuple of parents) joins them again."""
    (tmp_path / "__init__.py").write_text("")
    _write(tmp_path, "0001", "None")
    _write(tmp_path, "0002", '"0001"')
    _write(tmp_path, "0003", '"0001"')
    with pytest.raises(DispatcherError, match="0002, 0003"):
        revisions.head(tmp_path)
    _write(tmp_path, "0004", '("0002", "0003")')
    assert revisions.head(tmp_path) == "0004"
