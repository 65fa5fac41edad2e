"""The migrations' revision graph, read from their files without importing Alembic.

Readiness (``GET /readyz``, ``dispatcher check``) compares the database's
``alembic_version`` with the head. Alembic's ``ScriptDirectory`` would load Alembic, Mako
and Pygments' lexers into every serving process for that one string (about 6 MB of its
resident memory, docs/benchmarks.md); the head is read here from the same module-level
``revision`` and ``down_revision`` literals Alembic reads
(tests/migration/test_revisions.py checks that both agree).
"""

import ast
from pathlib import Path

from dispatcher.errors import DispatcherError


def migrations_dir() -> Path:
    """The Alembic environment and revisions, inside the package (so a wheel has them)."""
    return Path(__file__).resolve().parent / "migrations"


def _literals(path: Path) -> dict[str, object]:
    """The module-level ``revision`` and ``down_revision`` of one migration file."""
    found: dict[str, object] = {}
    for node in ast.parse(path.read_text(encoding="utf-8"), str(path)).body:
        target: ast.expr
        if isinstance(node, ast.AnnAssign) and node.value is not None:
            target, value = node.target, node.value
        elif isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, value = node.targets[0], node.value
        else:
            continue
        if isinstance(target, ast.Name) and target.id in {"revision", "down_revision"}:
            found[target.id] = ast.literal_eval(value)
    return found


def head(versions: Path | None = None) -> str | None:
    """The one revision no other revision follows; None without any migration.

    Raises:
        DispatcherError: the migrations have branched into several heads.
    """
    revisions: set[str] = set()
    parents: set[str] = set()
    for path in (versions or migrations_dir() / "versions").glob("*.py"):
        found = _literals(path)
        revision, down = found.get("revision"), found.get("down_revision")
        if not isinstance(revision, str):
            continue  # __init__.py
        revisions.add(revision)
        if isinstance(down, str):
            parents.add(down)
        elif isinstance(down, tuple | list):
            parents.update(str(d) for d in down)
    heads = sorted(revisions - parents)
    if len(heads) > 1:
        raise DispatcherError(f"the migrations have several heads: {', '.join(heads)}")
    return heads[0] if heads else None
