"""The SMS channel's configuration: Twilio accounts in failover order, the text template."""

from typing import Annotated, ClassVar

from pydantic import (
    Field,
    SecretStr,
    StringConstraints,
    field_validator,
    model_validator,
)

from dispatcher.channels.failover_config import FailoverChannelConfig, Provider
from dispatcher.channels.templates import DEFAULT_SMS, check_template
from dispatcher.events.schema import E164_PATTERN


class TwilioProvider(Provider):
    """One Twilio account; sends from a number or through a messaging service."""

    account_sid: Annotated[str, StringConstraints(pattern=r"^AC[0-9a-fA-F]{32}$")]
    auth_token: SecretStr
    from_number: Annotated[str, StringConstraints(pattern=E164_PATTERN)] | None = None
    messaging_service_sid: (
        Annotated[str, StringConstraints(pattern=r"^MG[0-9a-fA-F]{32}$")] | None
    ) = None
    #: Replaces ``https://api.twilio.com``, e.g. for a local Twilio-compatible server.
    base_url: str | None = None
    #: Whole request; the installed twilio async client applies no timeout of its own.
    timeout: float = Field(default=10.0, gt=0, le=120)

    @field_validator("base_url")
    @classmethod
    def _check_base_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("https://", "http://")):
            raise ValueError("base_url must be an http(s) URL")
        return value.rstrip("/") if value else value

    @model_validator(mode="after")
    def _check_sender(self) -> "TwilioProvider":
        if (self.from_number is None) == (self.messaging_service_sid is None):
            raise ValueError("set exactly one of from_number and messaging_service_sid")
        return self


class SmsChannelConfig(FailoverChannelConfig[TwilioProvider]):
    """The SMS channel: Twilio accounts in failover order and the text template."""

    channel_label: ClassVar[str] = "SMS"
    concurrency: int = Field(default=16, ge=1, le=1000)
    deadline_seconds: float = Field(default=15.0, gt=0, le=600)
    template: str = DEFAULT_SMS

    @field_validator("template")
    @classmethod
    def _check_template(cls, value: str) -> str:
        return check_template(value)
