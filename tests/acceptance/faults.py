"""Real processes for the fault tests: a private PostgreSQL cluster and `dispatcher serve`."""

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from tests.waiting import wait_for

PG_BIN = Path("/usr/lib/postgresql/15/bin")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PrivatePostgres:
    """A throwaway cluster (trust auth, own port) that a test may stop and start at will."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="dispatcher-pg-"))
        self.port = free_port()
        shutil.chown(self.dir, "postgres", "postgres")
        self._pg(
            "initdb", "-D", str(self.dir / "data"), "-A", "trust", "-U", "postgres"
        )

    @property
    def url(self) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/postgres"

    def _pg(self, tool: str, *args: str) -> None:
        subprocess.run(
            ["runuser", "-u", "postgres", "--", str(PG_BIN / tool), *args],
            check=True,
            capture_output=True,
            timeout=60,
        )

    def start(self) -> None:
        options = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c log_error_verbosity=terse"
        self._pg(
            "pg_ctl",
            "-D",
            str(self.dir / "data"),
            "-l",
            str(self.dir / "log"),
            "-w",
            "-o",
            options,
            "start",
        )

    def stop(self, mode: str = "fast") -> None:
        self._pg("pg_ctl", "-D", str(self.dir / "data"), "-m", mode, "-w", "stop")

    def destroy(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self.stop("immediate")
        shutil.rmtree(self.dir, ignore_errors=True)


class Dispatcher:
    """`python -m dispatcher serve` as a subprocess, its stderr kept in a file."""

    def __init__(
        self, env: dict[str, str], log_path: Path, command: Sequence[str] = ("serve",)
    ) -> None:
        self.log_path = log_path
        self._log = log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "dispatcher", *command],
            env={**os.environ, **env},
            stdout=self._log,
            stderr=self._log,
        )

    async def wait_ready(self, timeout: float = 30.0) -> None:
        """Until it logs ``dispatcher.serving``; fails at once if it exits instead."""

        def serving() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(
                    f"dispatcher exited: {self.log_path.read_text()[-2000:]}"
                )
            return "dispatcher.serving" in self.log_path.read_text(errors="replace")

        await wait_for(serving, "dispatcher.serving in its log", timeout=timeout)

    def signal(self, sig: signal.Signals) -> None:
        self.process.send_signal(sig)

    def wait(self, timeout: float) -> int:
        return self.process.wait(timeout)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self._log.close()


#: The ``start`` fixture: ``await start(env, log_path)`` is a serving ``dispatcher serve``.
Start = Callable[[dict[str, str], Path], Awaitable[Dispatcher]]
