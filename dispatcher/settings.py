"""Configuration: environment variables (prefix ``DISPATCHER_``) over an optional YAML file.

Validated once at start-up; an invalid value fails with a message that names the key and
never the value. Nothing else in the package reads ``os.environ``.
"""

import os
import re
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

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
    #: Concurrent writer transactions (group commit pipelines).
    writers: int = Field(default=2, ge=1, le=16)
    #: Raw body limit, checked before parsing; exactly this many bytes is accepted.
    max_body_bytes: int = Field(default=262_144, ge=1024, le=16 * 1024 * 1024)
    #: The quorum queue's ``x-delivery-limit``: set explicitly so RabbitMQ 3.x and 4.x agree.
    delivery_limit: int = Field(default=20, ge=1, le=1000)
    #: Cap of the backoff between retries of a batch while PostgreSQL is unreachable.
    storage_retry_max_delay: float = Field(default=5.0, gt=0, le=60)


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

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,  # noqa: ARG003 - no .env files: environment only
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (
            init_settings,
            env_settings,
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
            raise ConfigError(f"configuration file not found: {config_file}")
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
    except (
        OSError,
        ValueError,
        yaml.YAMLError,
    ) as exc:  # unreadable or unparsable YAML
        raise ConfigError(f"cannot read configuration: {type(exc).__name__}") from None


def describe_validation_error(exc: ValidationError) -> str:
    """One line per invalid key, with pydantic's message but never the input value."""
    lines = []
    for err in exc.errors(include_input=False, include_url=False):
        key = ".".join(str(p) for p in err["loc"]) or "<root>"
        env = "DISPATCHER_" + "__".join(str(p) for p in err["loc"]).upper()
        lines.append(f"{key} ({env}): {err['msg']}")
    return "invalid configuration: " + "; ".join(lines)
