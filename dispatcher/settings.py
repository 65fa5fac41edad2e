"""Configuration: environment variables (prefix ``DISPATCHER_``) over an optional YAML file.

Validated once at start-up; an invalid value fails with a message that names the key and
never the value. Nothing else in the package reads ``os.environ``.
"""

import os
import re
from collections.abc import Mapping, Sequence
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any, Final, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
    YamlConfigSettingsSource,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError
from yarl import URL

from dispatcher.api.config import ApiSettings
from dispatcher.channels.config import ChannelsConfig
from dispatcher.errors import ConfigError
from dispatcher.events.routing import RoutingRule

_FROZEN = ConfigDict(frozen=True, extra="forbid")


class IngestSettings(BaseModel):
    """How the ingest consumer reads, batches and acks."""

    model_config = _FROZEN

    #: Unacked messages the broker may hand us at once; also bounds memory during an outage.
    prefetch: int = Field(default=2000, ge=1, le=65535)
    #: Most messages persisted in one transaction.
    batch_max: int = Field(default=500, ge=1, le=10000)
    #: Concurrent writer transactions (group commit pipelines). One by default: its
    #: batches are larger, and a drain's PostgreSQL CPU per event 7-10 % lower and its
    #: rate 6-10 % higher than with two, at the same latency (docs/benchmarks.md).
    writers: int = Field(default=1, ge=1, le=16)
    #: Raw body limit, checked before parsing; exactly this many bytes is accepted.
    max_body_bytes: int = Field(default=262_144, ge=1024, le=16 * 1024 * 1024)
    #: The quorum queue's ``x-delivery-limit``: set explicitly so RabbitMQ 3.x and 4.x agree.
    delivery_limit: int = Field(default=20, ge=1, le=1000)
    #: Cap of the backoff between retries of a batch while PostgreSQL is unreachable.
    storage_retry_max_delay: float = Field(default=5.0, gt=0, le=60)
    #: Lease new deliveries to this replica's channel workers in the transaction that
    #: inserts them, as many as they have free slots for, and send them without a claim
    #: (docs/delivery.md, "The fast path"). Off: every delivery waits to be claimed.
    fast_path: bool = True


_ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class InterpolatedYamlSource(YamlConfigSettingsSource):
    """The YAML file, with ``${NAME}`` in any string replaced by the environment's value.

    Secrets stay in the environment while the file says where they go, e.g.
    ``auth_token: ${TWILIO_AUTH_TOKEN}``. A reference to an unset variable is an error that
    names the variable.
    """

    def _read_file(self, file_path: Path | Traversable) -> dict[str, Any]:
        data: dict[str, Any] = _interpolate(super()._read_file(file_path))
        return data


def _interpolate(value: Any) -> Any:
    if isinstance(value, str):
        return _ENV_REFERENCE.sub(_lookup, value)
    if isinstance(value, dict):
        return {k: _interpolate(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v) for v in value]
    return value


def _lookup(match: re.Match[str]) -> str:
    name = match.group(1)
    try:
        return os.environ[name]
    except KeyError:
        raise ConfigError(
            f"the configuration file refers to ${{{name}}}, which is not set"
        ) from None


class _UnreadableVariable(ValueError):
    """An environment variable that should hold JSON and does not (carries its name only)."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name.upper()


class _EnvSource(EnvSettingsSource):
    """The environment, where a value that is not the JSON its setting needs names its
    variable (pydantic-settings names only the top-level field, and never the variable)."""

    def prepare_field_value(
        self, field_name: str, field: FieldInfo, value: Any, value_is_complex: bool
    ) -> Any:
        try:
            return super().prepare_field_value(
                field_name, field, value, value_is_complex
            )
        except _UnreadableVariable:
            raise
        except ValueError:
            raise _UnreadableVariable(self.env_prefix + field_name) from None

    def explode_env_vars(
        self, field_name: str, field: FieldInfo, env_vars: Mapping[str, str | None]
    ) -> dict[str, Any]:
        try:
            return super().explode_env_vars(field_name, field, env_vars)
        except ValueError:
            for name, value in env_vars.items():  # find the culprit, one at a time
                try:
                    super().explode_env_vars(field_name, field, {name: value})
                except ValueError:
                    raise _UnreadableVariable(name) from None
            raise


_CREDENTIALS_HINT = (
    "percent-encode any '@', ':', '/', '?' and '#' in the user name and password"
)
_MAX_PORT: Final = 65535
_PORT_RANGE: Final = f"the port must be between 1 and {_MAX_PORT}"
# A host name (IDNA or not), an IPv4 address or an IPv6 address without brackets.
_HOST: Final = re.compile(r"[\w.:-]+")
#: Query parameters of ``database_url`` passed on to asyncpg, and their allowed values.
_DATABASE_QUERY: Final[Mapping[str, frozenset[str]]] = {
    "ssl": frozenset(
        {"disable", "allow", "prefer", "require", "verify-ca", "verify-full"}
    ),
    "target_session_attrs": frozenset(
        {"any", "primary", "standby", "prefer-standby", "read-write", "read-only"}
    ),
}


def _database_url_problem(url: str) -> str | None:
    """What is wrong with the shape of a database URL, or None; never repeats any of it."""
    try:
        parsed = make_url(url)
        port = parsed.port
    except (ArgumentError, ValueError, TypeError):
        return f"not a valid URL ({_CREDENTIALS_HINT})"
    if parsed.drivername != "postgresql+asyncpg":
        return "must start with postgresql+asyncpg://"
    if parsed.host is not None and not _HOST.fullmatch(parsed.host):
        return f"the host is not a host name or address ({_CREDENTIALS_HINT})"
    if port is not None and not 0 < port <= _MAX_PORT:
        return _PORT_RANGE
    for key, values in parsed.query.items():
        allowed = _DATABASE_QUERY.get(key)
        if allowed is None:
            return "unsupported query parameter; allowed: " + ", ".join(_DATABASE_QUERY)
        if not ({values} if isinstance(values, str) else set(values)) <= allowed:
            return f"{key} must be one of: {', '.join(sorted(allowed))}"
    return None


def _amqp_url_problem(url: str) -> str | None:
    """What is wrong with the shape of an AMQP URL, or None; never repeats any of it.

    Checked before anything connects: aio-pika retries a URL without a host forever, and
    a bare word would be taken for a virtual host of the default broker.
    """
    try:
        parsed = URL(url)
        port = parsed.port
    except (ValueError, TypeError):
        return f"not a valid URL ({_CREDENTIALS_HINT})"
    if parsed.scheme not in {"amqp", "amqps"}:
        return "must start with amqp:// or amqps://"
    if not parsed.raw_host:
        return "must name the broker's host"
    if not _HOST.fullmatch(parsed.raw_host):
        return "the host is not a host name or address"
    # An unencoded '/', '?' or '#' in a password moves the rest of the userinfo into the
    # path, query or fragment; the virtual host is one path segment ('/' is %2F).
    if (
        parsed.raw_fragment
        or parsed.raw_path.count("/") > 1
        or "@" in parsed.raw_path
        or "@" in parsed.raw_query_string
    ):
        return f"not a valid AMQP URL (the virtual host is one segment; {_CREDENTIALS_HINT})"
    if port is not None and not 0 < port <= _MAX_PORT:
        return _PORT_RANGE
    return None


def _valid(problem: str | None, value: SecretStr) -> SecretStr:
    if problem is not None:
        raise ValueError(problem)
    return value


class Settings(BaseSettings):
    """Everything the dispatcher can be told; see docs/configuration.md."""

    model_config = SettingsConfigDict(
        env_prefix="DISPATCHER_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    database_url: SecretStr = SecretStr(
        "postgresql+asyncpg://dispatcher@127.0.0.1:5432/dispatcher"
    )
    database_pool_size: int = Field(default=10, ge=1, le=200)
    amqp_url: SecretStr = SecretStr("amqp://guest:guest@127.0.0.1:5672/")
    #: The topic exchange publishers send events to.
    exchange: str = Field(default="notifications", min_length=1, max_length=200)
    #: Prefix of every queue the dispatcher declares (``<prefix>.ingest`` ...).
    queue_prefix: str = Field(default="dispatcher", min_length=1, max_length=100)
    #: Routing keys the ingest queue is bound with (AMQP topic patterns).
    bindings: tuple[str, ...] = ("#",)
    ingest: IngestSettings = IngestSettings()
    routing: tuple[RoutingRule, ...] = ()
    channels: ChannelsConfig = ChannelsConfig()
    api: ApiSettings = ApiSettings()
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["json", "console"] = "json"
    #: ``dispatcher worker`` (no API) serves ``/metrics`` on this port; None: it does not.
    metrics_port: int | None = Field(default=None, ge=1, le=65535)
    metrics_host: str = Field(default="127.0.0.1", min_length=1, max_length=255)

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: SecretStr) -> SecretStr:
        return _valid(_database_url_problem(value.get_secret_value()), value)

    @field_validator("amqp_url")
    @classmethod
    def _check_amqp_url(cls, value: SecretStr) -> SecretStr:
        return _valid(_amqp_url_problem(value.get_secret_value()), value)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,  # noqa: ARG003 - replaced by _EnvSource
        dotenv_settings: PydanticBaseSettingsSource,  # noqa: ARG003 - no .env files: environment only
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (
            init_settings,
            _EnvSource(settings_cls),
            InterpolatedYamlSource(settings_cls),
            file_secret_settings,
        )


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Build and validate the settings once.

    Args:
        config_file: Optional YAML file; environment variables take precedence over it.
        overrides: Values that take precedence over both (used by the CLI and tests).

    Raises:
        ConfigError: naming every invalid key, never a value.
    """
    cls: type[Settings] = Settings
    if config_file is not None:
        if not config_file.is_file():
            raise ConfigError(f"{_CONFIG_FILE}: not found: {config_file}")
        cls = type(
            "Settings",
            (Settings,),
            {"model_config": {**Settings.model_config, "yaml_file": config_file}},
        )
    try:
        return cls(**overrides)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc)) from None
    except ConfigError:
        raise
    except SettingsError as exc:
        if isinstance(exc.__cause__, _UnreadableVariable):
            name = exc.__cause__.name
            key = name.removeprefix("DISPATCHER_").lower().replace("__", ".")
            raise ConfigError(
                f"invalid configuration: {key} ({name}): not valid JSON"
            ) from None
        raise ConfigError(f"invalid configuration: {exc}") from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{_CONFIG_FILE}: not valid YAML{where}") from None
    except (OSError, ValueError, yaml.YAMLError) as exc:  # unreadable, not a mapping
        raise ConfigError(
            f"{_CONFIG_FILE}: cannot be read as a YAML mapping ({type(exc).__name__})"
        ) from None


_CONFIG_FILE = "configuration file (--config, DISPATCHER_CONFIG)"


def describe_validation_error(exc: ValidationError) -> str:
    """One entry per invalid key with the variable that sets it, never the input value."""
    lines: list[str] = []
    for err in exc.errors(include_input=False, include_url=False):
        # pydantic adds a step per union member, e.g. "lax-or-strict[...]": not a key
        loc = [p for p in err["loc"] if isinstance(p, int) or _KEY_PART.fullmatch(p)]
        key = ".".join(str(p) for p in loc) or "<root>"
        message = err["msg"].removeprefix("Value error, ")
        line = f"{key} ({_variable(loc)}): {message}"
        if line not in lines:
            lines.append(line)
    return "invalid configuration: " + "; ".join(lines)


_KEY_PART: Final = re.compile(r"[\w.-]+")


def _variable(loc: Sequence[int | str]) -> str:
    """The environment variable that sets ``loc``: a list is set as a whole, in JSON."""
    parts: list[str] = []
    for part in loc:
        if isinstance(part, int):
            break
        parts.append(part)
    return "DISPATCHER_" + "__".join(parts).upper()
