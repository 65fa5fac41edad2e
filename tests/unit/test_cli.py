"""The CLI's error funnel: clear one-line errors, exit codes, no tracebacks unless -v."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dispatcher.cli import describe
from dispatcher.events.schema import event_json_schema

SCHEMA_FILE = (
    Path(__file__).parents[2] / "dispatcher" / "events" / "event-v1.schema.json"
)


def run(
    *args: str, env: dict[str, str] | None = None, stdin: bytes = b""
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dispatcher", *args],
        input=stdin.decode(),
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["serve", "--no-such-option"], "No such option"),
        (["no-such-command"], "No such command"),
        (["publish", "--attempts", "zero"], "attempts"),
        (["publish", "--attempts", "0"], "attempts"),
    ],
    ids=["unknown-option", "unknown-command", "non-integer", "out-of-range"],
)
def test_usage_errors_exit_2_without_traceback(args: list[str], needle: str) -> None:
    """A bad argument gets a message and exit code 2, never a traceback."""
    result = run(*args)
    assert result.returncode == 2, result.stderr
    assert needle in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_file_is_a_usage_error() -> None:
    """Publishing a file that does not exist names the file and exits 2."""
    result = run("publish", "/nonexistent/event.json")
    assert result.returncode == 2
    assert "no such file" in result.stderr
    assert "Traceback" not in result.stderr


def test_invalid_config_names_key_not_secret_value() -> None:
    """Invalid configuration fails with exit 2, naming the key and never the secret."""
    secret = "s3cr3t-canary-value"
    result = run(
        "check",
        env={
            "DISPATCHER_INGEST__PREFETCH": "-5",
            "DISPATCHER_AMQP_URL": f"amqp://u:{secret}@h/",
        },
    )
    assert result.returncode == 2
    assert "ingest.prefetch" in result.stderr
    assert "DISPATCHER_INGEST__PREFETCH" in result.stderr
    assert secret not in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_config_file_is_one_line_error(tmp_path: Path) -> None:
    """A --config file that does not exist is reported in one line, exit 2."""
    result = run("--config", str(tmp_path / "missing.yaml"), "check")
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error: configuration file (--config")
    assert "not found" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_unreachable_broker_is_one_line_error_and_traceback_with_verbose() -> None:
    """Runtime errors print the chain of causes in one line; -v adds the traceback."""
    env = {"DISPATCHER_AMQP_URL": "amqp://guest:guest@127.0.0.1:1/"}
    plain = run("publish", "-", env=env, stdin=b'{"type": "crisis.detected"}')
    assert plain.returncode == 1
    assert plain.stderr.startswith("error: cannot connect to RabbitMQ")
    assert "Traceback" not in plain.stderr
    verbose = run("-v", "publish", "-", env=env, stdin=b'{"type": "crisis.detected"}')
    assert verbose.returncode == 1
    assert "Traceback" in verbose.stderr


def test_publish_non_json_requires_routing_key() -> None:
    """Publishing bytes that are not JSON asks for --routing-key instead of guessing."""
    result = run("publish", "-", stdin=b"not json")
    assert result.returncode == 2
    assert "--routing-key" in result.stderr


def test_describe_joins_the_cause_chain() -> None:
    """describe() renders an exception and its causes on one line, without repeats."""
    inner = ConnectionRefusedError("connection refused")
    outer = RuntimeError("cannot reach the broker")
    outer.__cause__ = inner
    assert describe(outer) == "cannot reach the broker: connection refused"


def test_committed_json_schema_matches_the_model() -> None:
    """The committed JSON Schema is what the model generates (run `dispatcher schema -o ...`)."""
    assert json.loads(SCHEMA_FILE.read_text()) == event_json_schema()
