"""The built wheel carries the migrations: installed alone, it migrates an empty database."""

import os
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text
from sqlalchemy.ext.asyncio import AsyncEngine

from dispatcher.db.migrate import alembic_config, migrations_dir
from dispatcher.db.models import Base

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


def _run(
    *args: str | Path, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [str(a) for a in args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, f"{args[:3]} failed:\n{done.stdout}\n{done.stderr}"
    return done


def _build_wheel(tmp_path: Path) -> Path:
    """Build from a copy of what the Dockerfile copies, so stale build/ output or files
    outside the package can never end up in (or stand in for) the wheel."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(
        ROOT / "dispatcher",
        src / "dispatcher",
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
    )
    out = tmp_path / "wheels"
    # Offline: setuptools comes from this venv (the test extra), nothing from an index.
    _run(
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--no-deps",
        "--no-build-isolation",
        "--no-index",
        "--quiet",
        "--wheel-dir",
        out,
        src,
        cwd=tmp_path,
    )
    (wheel,) = out.glob("dispatcher-*.whl")
    return wheel


def _fresh_venv(tmp_path: Path, wheel: Path) -> Path:
    """A new virtualenv with the wheel installed and this venv's site-packages appended
    for the dependencies only (a path line in a .pth: that directory's own .pth files,
    the editable install's among them, are not processed)."""
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    site = _run(
        python,
        "-c",
        "import sysconfig; print(sysconfig.get_paths()['purelib'])",
        cwd=tmp_path,
    ).stdout.strip()
    ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    Path(site, "dependencies.pth").write_text("\n".join(sorted(ours)) + "\n")
    _run(
        sys.executable,
        "-m",
        "pip",
        "--python",
        python,
        "install",
        "--no-deps",
        "--no-index",
        "--quiet",
        wheel,
        cwd=tmp_path,
    )
    return env_dir


async def test_installed_wheel_migrates_an_empty_database(
    tmp_path: Path, empty_database: str, empty_engine: AsyncEngine
) -> None:
    """`dispatcher migrate` from a wheel in a fresh venv, away from the source tree,
    brings an empty database to head."""
    wheel = _build_wheel(tmp_path)
    shipped = set(zipfile.ZipFile(wheel).namelist())
    sources = {
        path.relative_to(ROOT).as_posix()
        for path in migrations_dir().rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    }
    assert sources - shipped == set(), "migration files missing from the wheel"

    env_dir = _fresh_venv(tmp_path, wheel)
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("PYTHON", "DISPATCHER_"))
    }
    env["DISPATCHER_DATABASE_URL"] = empty_database
    imported = _run(
        env_dir / "bin" / "python",
        "-c",
        "import dispatcher.db.migrate as m; print(m.migrations_dir())",
        cwd=tmp_path,
        env=env,
    ).stdout.strip()
    assert Path(imported).is_relative_to(env_dir), imported

    migrated = _run(env_dir / "bin" / "dispatcher", "migrate", cwd=tmp_path, env=env)
    assert "database upgraded to head" in migrated.stdout

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    async with empty_engine.connect() as conn:
        version = (
            await conn.execute(text("SELECT version_num FROM alembic_version"))
        ).scalar_one()
        tables = set(await conn.run_sync(lambda c: inspect(c).get_table_names()))
    assert version == head
    assert set(Base.metadata.tables) <= tables
