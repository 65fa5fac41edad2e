"""The API's commands: `dispatcher serve` runs the API (unless --no-api), `dispatcher api`
runs it alone, `dispatcher token create` prints a token once with its config entry."""

import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from dispatcher.api.auth import hash_token
from dispatcher.api.config import ApiToken
from tests.acceptance.faults import Dispatcher, free_port
from tests.acceptance.test_ingest_faults import env_for
from tests.waiting import wait_for

pytestmark = [pytest.mark.postgres, pytest.mark.rabbitmq]


def test_token_create_prints_token_once_and_its_config_entry() -> None:
    """The printed entry holds the token's SHA-256 and scopes, never the token."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "dispatcher",
            "token",
            "create",
            "lead",
            "--scope",
            "audit:read",
            "--scope",
            "audit:read-pii",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    lines = [line.strip() for line in result.stdout.splitlines()]
    token = next(line for line in lines if line.startswith("dsp_"))
    entry_line = next(line for line in lines if line.startswith("- {"))
    entry = ApiToken.model_validate(json.loads(entry_line[2:]))
    assert entry.name == "lead"
    assert entry.sha256 == hash_token(token)
    assert [s.value for s in entry.scopes] == ["audit:read", "audit:read-pii"]
    assert token not in entry_line


def test_token_create_refuses_a_bad_name() -> None:
    """A name that cannot be configured is a usage error (exit 2)."""
    result = subprocess.run(
        [sys.executable, "-m", "dispatcher", "token", "create", "bad name!"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "dsp_" not in result.stdout


def healthz(port: int) -> int | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
            return int(r.status)
    except (urllib.error.URLError, OSError):
        return None


async def wait_healthz(port: int, process: Dispatcher) -> None:
    def answers() -> bool:
        assert process.process.poll() is None, process.log_path.read_text()[-2000:]
        return healthz(port) == 200

    await wait_for(answers, f"/healthz on port {port} to answer 200", timeout=30)


@pytest.mark.usefixtures("cleanup_broker")
async def test_serve_runs_the_api_and_stops_on_sigterm(
    names: dict[str, str], database: str, tmp_path: Path
) -> None:
    """`dispatcher serve` answers /healthz on api.port and exits 0 on SIGTERM."""
    port = free_port()
    env = {**env_for(names, database), "DISPATCHER_API__PORT": str(port)}
    serve = Dispatcher(env, tmp_path / "serve.log")
    try:
        await serve.wait_ready()
        await wait_healthz(port, serve)
        serve.signal(signal.SIGTERM)
        assert serve.wait(40) == 0
        assert healthz(port) is None
    finally:
        serve.close()


@pytest.mark.usefixtures("cleanup_broker")
async def test_serve_no_api_serves_no_api(
    names: dict[str, str], database: str, tmp_path: Path
) -> None:
    """With --no-api, serve runs ingest but listens on no API port."""
    port = free_port()
    env = {**env_for(names, database), "DISPATCHER_API__PORT": str(port)}
    serve = Dispatcher(env, tmp_path / "serve.log", ["serve", "--no-api"])
    try:
        await serve.wait_ready()
        assert healthz(port) is None
        assert "dispatcher.api.started" not in serve.log_path.read_text()
    finally:
        serve.close()


async def test_api_command_serves_alone(database: str, tmp_path: Path) -> None:
    """`dispatcher api` serves the API without ingest, until SIGTERM."""
    port = free_port()
    env = {"DISPATCHER_DATABASE_URL": database, "DISPATCHER_API__PORT": str(port)}
    api = Dispatcher({**os.environ, **env}, tmp_path / "api.log", ["api"])
    try:
        await wait_healthz(port, api)
        assert "dispatcher.ingest.started" not in api.log_path.read_text()
        api.signal(signal.SIGTERM)
        assert api.wait(30) == 0
    finally:
        api.close()
