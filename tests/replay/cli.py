"""The ``dispatcher`` command as an operator runs it: a subprocess, no terminal."""

import os
import subprocess
import sys


def dispatcher(
    *args: str, env: dict[str, str] | None = None, own_settings: bool = False
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m dispatcher ARGS`` with ``env`` over this environment; with
    ``own_settings``, without the DISPATCHER_* variables (it reads ``--config`` only)."""
    inherited = {
        k: v
        for k, v in os.environ.items()
        if not (own_settings and k.startswith("DISPATCHER_"))
    }
    return subprocess.run(
        [sys.executable, "-m", "dispatcher", *args],
        capture_output=True,
        text=True,
        env={**inherited, **(env or {})},
        timeout=120,
        check=False,
        stdin=subprocess.DEVNULL,
    )
