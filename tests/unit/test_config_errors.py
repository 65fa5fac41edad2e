"""Invalid configuration through the real CLI: one line naming the setting and its
environment variable, exit 2, never the value (each bad value carries a secret canary)."""

import logging
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from dispatcher.cli import main

AMQP = ("amqp_url", "DISPATCHER_AMQP_URL")
DATABASE = ("database_url", "DISPATCHER_DATABASE_URL")
ENDPOINTS = ("channels.webhook.endpoints", "DISPATCHER_CHANNELS__WEBHOOK__ENDPOINTS")
CONFIG_FILE = ("configuration file", "DISPATCHER_CONFIG")


@dataclass(frozen=True)
class Case:
    """One bad value: ``{c}`` in an environment value or the YAML text is the canary."""

    id: str
    setting: tuple[str, str]
    env: dict[str, str] = field(default_factory=dict)
    yaml: bytes | None = None


def amqp(case_id: str, url: str) -> Case:
    return Case(case_id, AMQP, {"DISPATCHER_AMQP_URL": url})


def database(case_id: str, url: str) -> Case:
    return Case(case_id, DATABASE, {"DISPATCHER_DATABASE_URL": url})


def env(case_id: str, name: str, value: str, key: str) -> Case:
    return Case(case_id, (key, name), {name: value})


CASES = [
    # a password with an unescaped '/', '#' or '?' (issue 16, item 5)
    amqp("amqp-password-slash", "amqp://guest:{c}/rest@127.0.0.1:5672/v"),
    amqp("amqp-password-hash", "amqp://guest:{c}#rest@127.0.0.1:5672/v"),
    amqp("amqp-password-question", "amqp://guest:{c}?rest@127.0.0.1:5672/v"),
    amqp("amqp-digit-password-slash", "amqp://guest:5672/{c}@127.0.0.1:5672/v"),
    amqp("amqp-no-host", "amqp:///{c}"),
    amqp("amqp-empty-host", "amqp://guest:{c}@:5672/"),
    amqp("amqp-bare-word", "{c}"),
    amqp("amqp-wrong-scheme", "http://guest:{c}@127.0.0.1:5672/"),
    amqp("amqp-port-out-of-range", "amqp://guest:{c}@127.0.0.1:99999/"),
    amqp("amqp-port-zero", "amqp://guest:{c}@127.0.0.1:0/"),
    amqp("amqp-port-not-a-number", "amqp://guest:guest@127.0.0.1:{c}/"),
    amqp("amqp-broken-ipv6", "amqp://guest:{c}@[::1:5672/"),
    amqp("amqp-space-in-host", "amqp://guest:guest@{c} host/"),
    amqp("amqp-fragment", "amqp://guest:{c}@127.0.0.1:5672/v#x"),
    database("db-bare-word", "{c}"),
    database("db-empty", ""),
    database("db-unknown-dialect", "postgres://u:{c}@127.0.0.1/db"),
    database("db-unknown-driver", "postgresql+nodriver://u:{c}@127.0.0.1/db"),
    database("db-sync-driver", "postgresql+psycopg2://u:{c}@127.0.0.1/db"),
    database("db-other-database", "mysql+aiomysql://u:{c}@127.0.0.1/db"),
    database("db-port-not-a-number", "postgresql+asyncpg://u:p@127.0.0.1:{c}/db"),
    database("db-port-out-of-range", "postgresql+asyncpg://u:{c}@127.0.0.1:99999/db"),
    database("db-password-at", "postgresql+asyncpg://u:p@{c}@127.0.0.1/db"),
    database("db-multi-host", "postgresql+asyncpg://u:{c}@h1:5432,h2:5433/db"),
    database("db-sslmode", "postgresql+asyncpg://u:{c}@127.0.0.1/db?sslmode=require"),
    database("db-unknown-parameter", "postgresql+asyncpg://u:p@127.0.0.1/db?{c}=1"),
    database("db-bad-ssl-value", "postgresql+asyncpg://u:p@127.0.0.1/db?ssl={c}"),
    env("endpoints-broken-json", ENDPOINTS[1], '{{"a": {{"url": "{c}"', ENDPOINTS[0]),
    env("endpoints-not-json", ENDPOINTS[1], "{c}", ENDPOINTS[0]),
    env(
        "endpoint-url-credentials",
        ENDPOINTS[1],
        '{{"a": {{"url": "https://u:{c}@hooks.example.org/"}}}}',
        ENDPOINTS[0],
    ),
    env(
        "endpoint-secrets-broken-json",
        "DISPATCHER_CHANNELS__WEBHOOK__ENDPOINTS__A__SECRETS",
        '["whsec_{c}"',
        "channels.webhook.endpoints.a.secrets",
    ),
    env("channels-not-json", "DISPATCHER_CHANNELS", "{{{c}", "channels"),
    env("ingest-not-json", "DISPATCHER_INGEST", "{c}", "ingest"),
    env("bindings-not-json", "DISPATCHER_BINDINGS", "{c}", "bindings"),
    env("routing-broken-json", "DISPATCHER_ROUTING", '[{{"name": "{c}"', "routing"),
    env(
        "routing-bad-phone",
        "DISPATCHER_ROUTING",
        '[{{"name": "r", "recipients": [{{"channel": "sms", "to": "{c}"}}]}}]',
        "routing.0.recipients.0.to",
    ),
    env(
        "private-network-not-a-cidr",
        "DISPATCHER_CHANNELS__WEBHOOK__ALLOW_PRIVATE_NETWORKS",
        '["{c}"]',
        "channels.webhook.allow_private_networks",
    ),
    env("pool-size", "DISPATCHER_DATABASE_POOL_SIZE", "{c}", "database_pool_size"),
    env("prefetch", "DISPATCHER_INGEST__PREFETCH", "{c}", "ingest.prefetch"),
    env(
        "retry-delay",
        "DISPATCHER_INGEST__STORAGE_RETRY_MAX_DELAY",
        "{c}",
        "ingest.storage_retry_max_delay",
    ),
    env(
        "webhook-concurrency",
        "DISPATCHER_CHANNELS__WEBHOOK__CONCURRENCY",
        "{c}",
        "channels.webhook.concurrency",
    ),
    env(
        "email-max-attempts",
        "DISPATCHER_CHANNELS__EMAIL__RETRY__MAX_ATTEMPTS",
        "{c}",
        "channels.email.retry.max_attempts",
    ),
    env("log-level", "DISPATCHER_LOG_LEVEL", "{c}", "log_level"),
    Case("yaml-database-url", DATABASE, yaml=b'database_url: "{c}"\n'),
    Case("yaml-amqp-url", AMQP, yaml=b'amqp_url: "amqp://u:{c}/x@127.0.0.1/"\n'),
    Case(
        "yaml-prefetch",
        ("ingest.prefetch", "DISPATCHER_INGEST__PREFETCH"),
        yaml=b"ingest:\n  prefetch: {c}\n",
    ),
    Case("yaml-syntax", CONFIG_FILE, yaml=b"routing: [{c}\n"),
    Case("yaml-top-level-list", CONFIG_FILE, yaml=b"- {c}\n"),
    Case("yaml-not-utf8", CONFIG_FILE, yaml=b"\xff{c}: 1\n"),
]


@pytest.fixture
def canary() -> str:
    return f"s3cr3t-canary-{uuid.uuid4()}"


@pytest.fixture(autouse=True)
def _restore_root_logger() -> Iterator[None]:
    """The CLI quiets the root logger for one-shot commands; keep other tests unaffected."""
    root = logging.getLogger()
    level = root.level
    yield
    root.setLevel(level)


def run_in_process(
    args: list[str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> tuple[int, str]:
    """``dispatcher.cli.main``, the console script's entry point, with its error funnel."""
    monkeypatch.setattr(sys, "argv", ["dispatcher", *args])
    with pytest.raises(SystemExit) as info:
        main()
    out, err = capsys.readouterr()
    code = info.value.code
    return code if isinstance(code, int) else 1, out + err


def assert_one_line_naming(output: str, setting: tuple[str, str], canary: str) -> None:
    key, variable = setting
    lines = output.strip().splitlines()
    assert len(lines) == 1, output
    assert lines[0].startswith("error: "), output
    assert key in lines[0], output
    # the variable itself, not a longer name that starts with it
    assert re.search(rf"\b{variable}\b(?!_)", lines[0]), output
    assert canary not in output
    assert "Traceback" not in output


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_value_is_named_by_setting_and_variable_never_shown(
    case: Case,
    canary: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`dispatcher check` with the bad value exits 2 with one line naming the setting and
    its variable, without the canary or a traceback."""
    monkeypatch.delenv("DISPATCHER_CONFIG", raising=False)
    for name, value in case.env.items():
        monkeypatch.setenv(name, value.format(c=canary))
    args = ["check"]
    if case.yaml is not None:
        monkeypatch.delenv(case.setting[1], raising=False)  # the environment would win
        config = tmp_path / "config.yaml"
        config.write_bytes(case.yaml.replace(b"{c}", canary.encode()))
        args = ["--config", str(config), *args]
    code, output = run_in_process(args, monkeypatch, capsys)
    assert code == 2, output
    assert_one_line_naming(output, case.setting, canary)


def run(
    *args: str, environ: dict[str, str], timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dispatcher", *args],
        input='{"type": "crisis.detected"}',
        capture_output=True,
        text=True,
        env={**os.environ, **environ},
        timeout=timeout,
        check=False,
    )


@pytest.mark.slow
@pytest.mark.parametrize("command", [["check"], ["publish", "-"], ["serve"]])
def test_password_with_a_slash_never_reaches_the_message(
    command: list[str], canary: str
) -> None:
    """check, publish and serve refuse an AMQP URL whose password has an unescaped '/'
    with one line naming amqp_url, exit 2, and never the password."""
    url = f"amqp://guest:{canary}/rest@127.0.0.1:5672/v"
    result = run(*command, environ={"DISPATCHER_AMQP_URL": url})
    assert result.returncode == 2, result.stderr
    assert_one_line_naming(result.stderr, AMQP, canary)
    assert canary not in result.stdout


@pytest.mark.slow
@pytest.mark.parametrize("url", ["amqp:///{c}", "{c}"], ids=["no-host", "bare-word"])
@pytest.mark.parametrize("command", [["publish", "--attempts", "1", "-"], ["serve"]])
def test_url_without_a_host_fails_at_once(
    url: str, command: list[str], canary: str
) -> None:
    """An AMQP URL without a host stops publish and serve before they connect (no retry
    loop, no default broker), in one line, even under -v never showing the URL."""
    environ = {"DISPATCHER_AMQP_URL": url.format(c=canary)}
    result = run(*command, environ=environ)
    assert result.returncode == 2, result.stderr
    assert_one_line_naming(result.stderr, AMQP, canary)
    verbose = run("-v", *command, environ=environ)
    assert verbose.returncode == 2
    assert canary not in verbose.stderr + verbose.stdout
