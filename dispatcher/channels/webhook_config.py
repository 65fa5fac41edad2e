"""The webhook channel's configuration: endpoints, their secrets and the destination policy.

Validated once at load: secret format, reserved headers and every URL's scheme,
credentials, port and IP literal (the errors name the key, never the URL or a secret). Host names are checked per connection, since DNS
answers change (``channels/ssrf.py``).
"""

from collections.abc import Iterable
from ipaddress import IPv4Network, IPv6Network
from pathlib import Path
from typing import Annotated, Final, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)
from yarl import URL

from dispatcher.channels import signing, ssrf
from dispatcher.resilience.delivery_policy import ChannelDelivery

_FROZEN = ConfigDict(frozen=True, extra="forbid")

#: Headers the channel sets itself; an endpoint may not override them.
RESERVED_HEADERS: Final = frozenset(
    {
        "content-type",
        "content-length",
        "content-encoding",
        "transfer-encoding",
        "host",
        "connection",
        "traceparent",
        "tracestate",
        "user-agent",
        "dispatcher-attempt",
        signing.ID_HEADER,
        signing.TIMESTAMP_HEADER,
        signing.SIGNATURE_HEADER,
    }
)


class WebhookEndpoint(BaseModel):
    """One receiver: where to POST and how to sign.

    Attributes:
        url: ``https://`` URL (``http://`` only with ``allow_http``); no credentials.
        secrets: Active ``whsec_`` signing secrets, newest first; two during rotation.
            Required by the channel (deliveries are never unsigned), optional at load so
            that ingest can start with endpoint names only.
        headers: Extra request headers (e.g. an ``Authorization`` token): secret values.
        event_types: Event-type patterns this endpoint receives (``fnmatch``).
        timeout: Seconds for one request; defaults to the channel's ``deadline_seconds``.
        ca_file: PEM bundle that replaces the system trust store for this endpoint.
    """

    model_config = _FROZEN
    url: str
    secrets: list[SecretStr] = Field(default_factory=list, max_length=8)
    headers: dict[str, SecretStr] = Field(default_factory=dict)
    event_types: list[str] = Field(default_factory=lambda: ["*"])
    timeout: float | None = Field(default=None, gt=0, le=300)
    ca_file: Path | None = None

    @field_validator("secrets")
    @classmethod
    def _check_secrets(cls, value: list[SecretStr]) -> list[SecretStr]:
        for secret in value:
            signing.decode_secret(secret.get_secret_value())
        return value

    @field_validator("headers")
    @classmethod
    def _check_headers(cls, value: dict[str, SecretStr]) -> dict[str, SecretStr]:
        for name, header in value.items():
            if name.lower() in RESERVED_HEADERS:
                raise ValueError(f"header {name!r} is set by the channel")
            if not name.isascii() or not name.replace("-", "").isalnum():
                raise ValueError("header names are letters, digits and '-'")
            if any(c in header.get_secret_value() for c in "\r\n\0"):
                raise ValueError(f"header {name!r} has a control character")
        return value

    def signing_keys(self) -> tuple[bytes, ...]:
        """The decoded keys, in configured order."""
        return tuple(signing.decode_secret(s.get_secret_value()) for s in self.secrets)


class WebhookChannelConfig(ChannelDelivery):
    """The webhook channel: endpoints, destination policy, pool and deadlines.

    Attributes:
        allow_private_networks: CIDRs allowed although not public (off by default).
        allow_http: Permit ``http://`` endpoint URLs.
        allowed_ports: Ports endpoint URLs may use; empty means any.
        concurrency: Connections open at once, over all endpoints.
        deadline_seconds: Overall limit of one attempt; the worker wraps ``send`` in it.
        connect_timeout: Seconds for the TCP connect and TLS handshake phase.
        max_response_bytes: Most response-body bytes read (then discarded).
        ca_file: PEM bundle for endpoints without their own ``ca_file``.
    """

    enabled: bool = True
    allow_private_networks: list[IPv4Network | IPv6Network] = Field(
        default_factory=list
    )
    allow_http: bool = False
    allowed_ports: list[Annotated[int, Field(ge=1, le=65535)]] = Field(
        default_factory=list
    )
    # After the policy fields: its validator reads them.
    endpoints: dict[str, WebhookEndpoint] = Field(default_factory=dict)
    concurrency: int = Field(default=32, ge=1, le=1024)
    max_inflight_per_recipient: int | None = Field(default=16, ge=1)
    deadline_seconds: float = Field(default=10.0, gt=0, le=300)
    connect_timeout: float = Field(default=5.0, gt=0, le=60)
    max_response_bytes: int = Field(default=65_536, ge=0, le=1_048_576)
    ca_file: Path | None = None

    @field_validator("endpoints")
    @classmethod
    def _check_urls(
        cls, endpoints: dict[str, WebhookEndpoint], info: ValidationInfo
    ) -> dict[str, WebhookEndpoint]:
        # A field validator, so that the error's location is channels.webhook.endpoints.
        try:
            policy = _policy(
                info.data["allow_http"],
                info.data["allowed_ports"],
                info.data["allow_private_networks"],
            )
        except KeyError:  # an invalid policy field is reported on its own
            return endpoints
        for name, endpoint in endpoints.items():
            try:
                refusal = ssrf.url_refusal(URL(endpoint.url), policy)
            except ValueError:
                refusal = "not a valid URL"
            if refusal is not None:
                raise ValueError(f"endpoints.{name}.url: {refusal}")
        return endpoints

    @model_validator(mode="after")
    def _check_endpoints(self) -> Self:
        if self.deadline_seconds >= self.lease_seconds:
            raise ValueError("deadline_seconds must be shorter than lease_seconds")
        for name, endpoint in self.endpoints.items():
            if (
                endpoint.timeout is not None
                and endpoint.timeout > self.deadline_seconds
            ):
                raise ValueError(f"endpoints.{name}.timeout exceeds deadline_seconds")
        return self

    def destination_policy(self) -> ssrf.DestinationPolicy:
        return _policy(self.allow_http, self.allowed_ports, self.allow_private_networks)


def _policy(
    allow_http: bool,
    allowed_ports: Iterable[int],
    allow_private_networks: Iterable[IPv4Network | IPv6Network],
) -> ssrf.DestinationPolicy:
    return ssrf.DestinationPolicy(
        allow_http=allow_http,
        allowed_ports=frozenset(allowed_ports),
        allow_private_networks=tuple(allow_private_networks),
    )
