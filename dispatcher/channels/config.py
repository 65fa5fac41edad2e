"""Channel configuration (placeholder written by the lead; the channel engineer owns this file)."""

from ipaddress import IPv4Network, IPv6Network

from pydantic import BaseModel, ConfigDict, Field, SecretStr

_FROZEN = ConfigDict(frozen=True, extra="forbid")


class WebhookEndpoint(BaseModel):
    model_config = _FROZEN
    url: str
    secrets: list[SecretStr] = Field(default_factory=list)
    headers: dict[str, str] = Field(default_factory=dict)
    event_types: list[str] = Field(default_factory=lambda: ["*"])
    timeout: float | None = None


class WebhookChannelConfig(BaseModel):
    model_config = _FROZEN
    enabled: bool = True
    endpoints: dict[str, WebhookEndpoint] = Field(default_factory=dict)
    allow_private_networks: list[IPv4Network | IPv6Network] = Field(
        default_factory=list
    )
    allow_http: bool = False


class ChannelsConfig(BaseModel):
    model_config = _FROZEN
    webhook: WebhookChannelConfig = WebhookChannelConfig()
