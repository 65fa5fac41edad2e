"""Every channel's configuration, as ``Settings.channels`` holds it."""

from pydantic import BaseModel, ConfigDict

from dispatcher.channels.email_config import EmailChannelConfig
from dispatcher.channels.sms_config import SmsChannelConfig
from dispatcher.channels.webhook_config import WebhookChannelConfig


class ChannelsConfig(BaseModel):
    """Per-channel provider settings (``channels.email``, ``channels.sms``, ``channels.webhook``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    email: EmailChannelConfig = EmailChannelConfig()
    sms: SmsChannelConfig = SmsChannelConfig()
    webhook: WebhookChannelConfig = WebhookChannelConfig()
