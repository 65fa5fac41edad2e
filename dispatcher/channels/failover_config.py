"""What the channels that fail over between providers (email relays, SMS accounts) share."""

from typing import Annotated, ClassVar, Generic, Self, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from dispatcher.events.schema import ENDPOINT_NAME_PATTERN
from dispatcher.resilience.delivery_policy import ChannelDelivery

#: A provider's name: the key of its breaker, its metrics and its audit rows.
ProviderName = Annotated[str, StringConstraints(pattern=ENDPOINT_NAME_PATTERN)]


class Provider(BaseModel):
    """One provider of a channel (an SMTP relay, a Twilio account), known by its name."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: ProviderName


P = TypeVar("P", bound=Provider)


class FailoverChannelConfig(ChannelDelivery, Generic[P]):
    """A channel's delivery settings and its providers, in failover order."""

    #: How errors name the channel ("the email channel is enabled but ...").
    channel_label: ClassVar[str] = "the"
    enabled: bool = False
    providers: list[P] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check_providers(self) -> Self:
        if self.enabled and not self.providers:
            raise ValueError(
                f"the {self.channel_label} channel is enabled but has no providers"
            )
        names = [provider.name for provider in self.providers]
        if len(names) != len(set(names)):
            raise ValueError("provider names must be unique")
        return self
