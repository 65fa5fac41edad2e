"""An install without the optional extra ``demo`` (no aiosmtpd): the runtime works, and
the demo says in one line which extra to install."""

import subprocess
import sys

#: Makes ``aiosmtpd`` unimportable in the child process, as in an install without the
#: ``demo`` extra (this environment has the extra: the test extra pulls it in).
WITHOUT_DEMO_EXTRA = """
import sys

class _NoAiosmtpd:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] == "aiosmtpd":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, _NoAiosmtpd())
"""


def _run(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", WITHOUT_DEMO_EXTRA + code, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _dispatcher(*args: str) -> subprocess.CompletedProcess[str]:
    """The ``dispatcher`` command with ``args``."""
    return _run(
        "import runpy; sys.argv[0] = 'dispatcher'; "
        "runpy.run_module('dispatcher', run_name='__main__')",
        *args,
    )


def test_demo_without_the_extra_names_it_in_one_line() -> None:
    """``dispatcher demo`` without aiosmtpd exits 1 with one line naming the extra."""
    result = _dispatcher("demo")
    assert result.returncode == 1, result.stderr
    assert result.stderr.splitlines() == [
        (
            "error: the optional extra 'demo' is not installed (no module aiosmtpd):"
            " pip install 'dispatcher[demo]'"
        )
    ]


def test_runtime_works_without_the_extra() -> None:
    """Without aiosmtpd, ``dispatcher --help`` works and every module but the SMTP sink
    and the demo imports (alembic's migration scripts run only under alembic)."""
    help_ = _dispatcher("--help")
    assert help_.returncode == 0, help_.stderr
    assert "demo" in help_.stdout
    imported = _run(
        "import importlib, pkgutil, dispatcher, dispatcher.cli\n"
        "for module in pkgutil.walk_packages(dispatcher.__path__, 'dispatcher.'):\n"
        "    if module.name.startswith(('dispatcher.sinks.smtp', 'dispatcher.demo',"
        " 'dispatcher.__main__', 'dispatcher.db.migrations.')):\n"
        "        continue\n"
        "    importlib.import_module(module.name)\n"
        "assert 'aiosmtpd' not in sys.modules\n"
        "print('imported')\n"
    )
    assert (imported.returncode, imported.stdout) == (0, "imported\n"), imported.stderr
