"""Settings of the audit query API (``api.*``, env ``DISPATCHER_API__*``)."""

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

_FROZEN = ConfigDict(frozen=True, extra="forbid")
MIN_KEY_LENGTH = 16


class Scope(StrEnum):
    """What a bearer token may do."""

    #: Read events, deliveries, attempts, rejections, audit entries and channels, masked.
    AUDIT_READ = "audit:read"
    #: Also see recipients, subject ids, ``data`` and rejected bodies unmasked (audited).
    AUDIT_READ_PII = "audit:read-pii"
    #: Replay and discard dead letters (the replay API).
    DLQ_WRITE = "dlq:write"


class ApiToken(BaseModel):
    """One accepted bearer token, stored as the SHA-256 of the token, never the token."""

    model_config = _FROZEN

    #: Who holds it; written in the audit log for every disclosure of PII.
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
    #: Lowercase hex SHA-256 of the token (``dispatcher token create`` prints it).
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    scopes: tuple[Scope, ...] = Field(min_length=1)


class ApiLimits(BaseModel):
    """Bounds that keep a flood of API requests from hurting ingest and delivery."""

    model_config = _FROZEN

    #: Pooled connections of the API's own engine (plus as many overflow).
    pool_size: int = Field(default=4, ge=1, le=50)
    #: ``statement_timeout`` on the API's connections, milliseconds.
    statement_timeout_ms: int = Field(default=5000, ge=100, le=600_000)
    #: A request still running after this many seconds is answered 503.
    request_timeout: float = Field(default=10.0, gt=0, le=600)
    max_body_bytes: int = Field(default=16_384, ge=0, le=16 * 1024 * 1024)
    max_header_bytes: int = Field(default=16_384, ge=1024, le=1024 * 1024)
    max_query_bytes: int = Field(default=4096, ge=256, le=65_536)
    #: Connections served at once; more are answered 503 by the server.
    max_connections: int = Field(default=200, ge=1, le=100_000)
    #: Idle keep-alive connections are closed after this many seconds.
    keep_alive_seconds: float = Field(default=5.0, gt=0, le=600)
    #: Sustained requests per second per token, and the burst above it.
    rate_per_second: float = Field(default=20.0, gt=0, le=100_000)
    burst: int = Field(default=40, ge=1, le=1_000_000)
    #: ``/v1/deliveries/count`` counts exactly up to this many rows, then estimates.
    exact_count_limit: int = Field(default=10_000, ge=0, le=10_000_000)
    #: A pagination cursor is refused after this many seconds.
    cursor_ttl_seconds: int = Field(default=3600, ge=10, le=7 * 86400)
    #: Seconds between refreshes of the ``/v1/channels`` snapshot.
    snapshot_interval: float = Field(default=5.0, gt=0, le=3600)


class ApiSettings(BaseModel):
    """The HTTP API that ``dispatcher api`` and ``dispatcher serve`` run (docs/api.md)."""

    model_config = _FROZEN

    host: str = Field(default="127.0.0.1", min_length=1, max_length=255)
    port: int = Field(default=8080, ge=0, le=65535)
    tokens: tuple[ApiToken, ...] = ()
    #: HMAC key of the recipient search index; set it before ingest so rows carry it.
    recipient_hash_key: SecretStr | None = None
    #: HMAC key of pagination cursors; unset, each process draws a random one, so a
    #: cursor only works on the replica that issued it.
    cursor_key: SecretStr | None = None
    limits: ApiLimits = ApiLimits()

    @model_validator(mode="after")
    def _unique_tokens(self) -> "ApiSettings":
        names = [t.name for t in self.tokens]
        if len(set(names)) != len(names):
            raise ValueError("token names must be unique")
        if len({t.sha256 for t in self.tokens}) != len(self.tokens):
            raise ValueError("a token hash is listed twice")
        key = self.recipient_hash_key
        if key is not None and len(key.get_secret_value()) < MIN_KEY_LENGTH:
            raise ValueError(
                f"recipient_hash_key must be at least {MIN_KEY_LENGTH} characters"
            )
        return self
