"""Settings: environment over YAML, secrets hidden, errors that name the key."""

from pathlib import Path

import pytest

from dispatcher.errors import ConfigError
from dispatcher.events.kinds import Severity
from dispatcher.settings import load_settings

SECRET = "pw-canary-7d1e"


def test_defaults_are_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    """With nothing configured the settings validate, with safe ingest defaults."""
    monkeypatch.delenv("DISPATCHER_CONFIG", raising=False)
    settings = load_settings()
    assert settings.ingest.max_body_bytes == 262_144
    assert settings.exchange == "notifications"


def test_secrets_are_masked_in_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    """Database and broker URLs are secrets: repr and str never show them."""
    monkeypatch.setenv(
        "DISPATCHER_DATABASE_URL", f"postgresql+asyncpg://u:{SECRET}@h/db"
    )
    monkeypatch.setenv("DISPATCHER_AMQP_URL", f"amqp://u:{SECRET}@h/")
    settings = load_settings()
    assert SECRET not in repr(settings)
    assert SECRET not in str(settings)
    assert settings.amqp_url.get_secret_value().endswith("@h/")


def test_yaml_overlay_and_env_precedence(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The YAML file configures routing; an environment variable beats the file."""
    config = tmp_path / "config.yaml"
    config.write_text(
        """
exchange: from-yaml
ingest:
  batch_max: 100
routing:
  - name: crisis-critical
    types: ["crisis.*"]
    min_severity: high
    recipients:
      - {channel: email, to: crisis-team@example.org}
      - {channel: sms, to: "+15551234567"}
"""
    )
    monkeypatch.setenv("DISPATCHER_EXCHANGE", "from-env")
    settings = load_settings(config)
    assert settings.exchange == "from-env"
    assert settings.ingest.batch_max == 100
    rule = settings.routing[0]
    assert rule.matches("crisis.detected", Severity.CRITICAL)
    assert not rule.matches("crisis.detected", Severity.LOW)
    assert not rule.matches("wellbeing.checkin", Severity.CRITICAL)


@pytest.mark.parametrize(
    ("yaml_text", "key"),
    [
        ("ingest:\n  prefetch: 0\n", "ingest.prefetch"),
        (
            "routing:\n  - name: r\n    recipients: [{channel: sms, to: '555'}]\n",
            "routing.0.recipients.0.to",
        ),
        (
            "routing:\n  - name: r\n    recipients: [{channel: fax, to: 'x'}]\n",
            "routing.0.recipients.0.channel",
        ),
        ("no_such_key: 1\n", "no_such_key"),
        ("log_format: xml\n", "log_format"),
    ],
    ids=["out-of-range", "bad-phone", "unknown-channel", "unknown-key", "bad-enum"],
)
def test_invalid_yaml_names_the_key(tmp_path: Path, yaml_text: str, key: str) -> None:
    """Every invalid value fails at start with a message naming its key."""
    config = tmp_path / "config.yaml"
    config.write_text(yaml_text)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_settings(config)


def test_invalid_secret_value_is_not_echoed(monkeypatch: pytest.MonkeyPatch) -> None:
    """A malformed value is reported by key; the value itself never appears."""
    monkeypatch.setenv("DISPATCHER_DATABASE_POOL_SIZE", SECRET)
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert "database_pool_size" in str(info.value)
    assert SECRET not in str(info.value)


def test_unparsable_yaml_is_a_config_error(tmp_path: Path) -> None:
    """A YAML syntax error is a ConfigError, not a traceback."""
    config = tmp_path / "config.yaml"
    config.write_text("routing: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML at line 2"):
        load_settings(config)


def test_deploy_example_config_is_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    """The example configuration shipped in deploy/ validates, secrets from the environment."""
    monkeypatch.setenv("TWILIO_AUTH_TOKEN", SECRET)
    monkeypatch.setenv("SAFETY_MONITOR_WEBHOOK_SECRET", "whsec_" + "A" * 32)
    example = Path(__file__).parents[2] / "deploy" / "config.example.yaml"
    settings = load_settings(example)
    assert settings.routing[0].name == "crisis-critical"
    assert [p.name for p in settings.channels.email.providers] == ["mailpit"]
    assert settings.channels.webhook.endpoints["safety-monitor"].secrets
    assert (
        SECRET
        not in (
            Path(__file__).parents[2] / "deploy" / "config.example.yaml"
        ).read_text()
    )


def test_yaml_refers_to_secrets_in_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``${NAME}`` in the file is filled from the environment; the file holds no secret."""
    monkeypatch.setenv("TEST_TWILIO_TOKEN", SECRET)
    config = tmp_path / "config.yaml"
    config.write_text(
        "channels:\n  sms:\n    enabled: true\n    providers:\n"
        "      - name: primary\n        account_sid: AC" + "0" * 32 + "\n"
        "        auth_token: ${TEST_TWILIO_TOKEN}\n        from_number: '+15550001111'\n"
    )
    settings = load_settings(config)
    (provider,) = settings.channels.sms.providers
    assert provider.auth_token.get_secret_value() == SECRET
    assert SECRET not in repr(settings)

    monkeypatch.delenv("TEST_TWILIO_TOKEN")
    with pytest.raises(ConfigError, match=r"\$\{TEST_TWILIO_TOKEN\}, which is not set"):
        load_settings(config)


@pytest.mark.parametrize(
    ("variable", "url"),
    [
        ("DISPATCHER_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/"),
        ("DISPATCHER_AMQP_URL", "amqps://u:p%2Fq%23r%3Fs%40t@rabbit.example.org/%2F"),
        ("DISPATCHER_AMQP_URL", "amqp://rabbit/prod?heartbeat=30&name=dispatcher"),
        ("DISPATCHER_AMQP_URL", "amqp://[::1]:5672/v"),
        ("DISPATCHER_AMQP_URL", "amqp://localhost"),
        ("DISPATCHER_DATABASE_URL", "postgresql+asyncpg://u:p@127.0.0.1:5432/db"),
        ("DISPATCHER_DATABASE_URL", "postgresql+asyncpg://u:p/q#r?s@db.example.org/d"),
        (
            "DISPATCHER_DATABASE_URL",
            "postgresql+asyncpg://u:p%40q@[::1]/db?ssl=require",
        ),
        ("DISPATCHER_DATABASE_URL", "postgresql+asyncpg:///dispatcher"),
        (
            "DISPATCHER_DATABASE_URL",
            "postgresql+asyncpg://u@pg/db?ssl=verify-full&target_session_attrs=primary",
        ),
    ],
)
def test_well_formed_urls_are_accepted(
    variable: str, url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The URL shape checks accept what the drivers accept: encoded credentials, a vhost,
    query options, IPv6, a database on the local socket."""
    monkeypatch.setenv(variable, url)
    settings = load_settings()
    field = (
        settings.amqp_url
        if variable == "DISPATCHER_AMQP_URL"
        else settings.database_url
    )
    assert field.get_secret_value() == url


def test_unreadable_nested_variable_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    """Broken JSON in a nested variable names that variable, and valid siblings still load."""
    monkeypatch.setenv("DISPATCHER_CHANNELS__WEBHOOK__ALLOW_HTTP", "true")
    monkeypatch.setenv("DISPATCHER_CHANNELS__WEBHOOK__ALLOWED_PORTS", f"[443, {SECRET}")
    with pytest.raises(ConfigError) as info:
        load_settings()
    message = str(info.value)
    assert "(DISPATCHER_CHANNELS__WEBHOOK__ALLOWED_PORTS)" in message
    assert SECRET not in message
    monkeypatch.setenv("DISPATCHER_CHANNELS__WEBHOOK__ALLOWED_PORTS", "[443]")
    assert load_settings().channels.webhook.allowed_ports == [443]
