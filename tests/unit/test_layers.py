"""Imports point down the layers: a module may import its own package or a lower layer.

The map is the architecture (docs/architecture.md, "Where things are"). A new top-level
module or package must be placed in it, so nobody adds one without deciding its layer.
"""

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "dispatcher"

#: Lowest first. Same layer, different package: no imports either way (independent).
LAYERS: tuple[frozenset[str], ...] = (
    frozenset({"__init__", "errors"}),
    # api.masking: pure masks of health data, shared by the API and the replay plans.
    frozenset({"events", "logs", "telemetry", "api.masking"}),
    frozenset({"topology", "resilience"}),
    frozenset({"db"}),
    # api.config: the API's settings model, a leaf that settings.py composes.
    frozenset({"channels", "outbox", "api.config"}),
    frozenset({"settings"}),
    frozenset({"delivery", "ingest", "publisher", "health"}),
    frozenset({"app", "testing", "sinks"}),
    frozenset({"api", "demo"}),
    frozenset({"cli"}),
    frozenset({"__main__"}),
)
LAYER = {unit: level for level, units in enumerate(LAYERS) for unit in units}


def _unit(module: str) -> str:
    """The layer unit of ``dispatcher.x.y``: ``x.y`` if the map places that module on its
    own (a leaf such as a package's configuration model), else the top-level ``x``."""
    parts = module.split(".")
    if len(parts) > 2 and f"{parts[1]}.{parts[2]}" in LAYER:
        return f"{parts[1]}.{parts[2]}"
    return parts[1] if len(parts) > 1 and parts[1] else "__init__"


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = (
        rel.parts[:-1] if rel.name == "__init__" and len(rel.parts) > 1 else rel.parts
    )
    return ".".join(parts)


def _imports(path: Path) -> Iterator[tuple[int, str]]:
    """Every ``dispatcher`` module imported anywhere in the file, lazy imports included."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = (
        _module_name(path).rsplit(".", 1)[0]
        if path.name != "__init__.py"
        else _module_name(path)
    )
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "dispatcher":
                    yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            if module.split(".")[0] != "dispatcher":
                continue
            if module == "dispatcher":  # from dispatcher import topology, __version__
                for alias in node.names:
                    submodule = (PACKAGE / alias.name).is_dir() or (
                        PACKAGE / f"{alias.name}.py"
                    ).exists()
                    yield node.lineno, f"dispatcher.{alias.name if submodule else ''}"
            else:
                yield node.lineno, module


def _sources() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "migrations" not in p.parts)


def upward_imports() -> list[str]:
    found = []
    for path in _sources():
        importer = _unit(_module_name(path))
        for line, imported in _imports(path):
            target = _unit(imported)
            if target == importer:
                continue
            if target not in LAYER:
                found.append(f"{path.name}:{line} imports {imported}: not in LAYERS")
            elif LAYER[target] >= LAYER[importer]:
                found.append(
                    f"{path.relative_to(PACKAGE.parent)}:{line}: {importer} "
                    f"(layer {LAYER[importer]}) imports {imported} (layer {LAYER[target]})"
                )
    return found


def test_every_top_level_unit_has_a_layer() -> None:
    """Each module and package directly under dispatcher/ is placed in the map."""
    units = {
        p.stem if p.is_file() else p.name
        for p in PACKAGE.iterdir()
        if (p.suffix == ".py" or (p / "__init__.py").exists())
    }
    assert units - {unit.split(".")[0] for unit in LAYER} == set()


def test_imports_point_down_the_layers() -> None:
    """No module imports a package of its own layer or of a layer above it."""
    assert upward_imports() == []


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("from dispatcher.app import build_engine\n", "imports dispatcher.app"),
        ("import dispatcher.cli.commands\n", "imports dispatcher.cli.commands"),
        (
            "def f():\n    from dispatcher.ingest import store\n",
            "imports dispatcher.ingest",
        ),
    ],
    ids=["from-import", "plain-import", "lazy-import"],
)
def test_an_upward_import_is_caught(
    source: str, expected: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The check itself fails on an upward import (here: outbox importing above it)."""
    fake = tmp_path / "dispatcher"
    (fake / "outbox").mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "outbox" / "__init__.py").write_text("")
    (fake / "outbox" / "bad.py").write_text(source)
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", fake)
    [violation] = upward_imports()
    assert expected in violation
