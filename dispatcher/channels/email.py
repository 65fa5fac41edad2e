"""Email through SMTP relays: configuration and the adapter for one relay."""

import re
import ssl
from collections.abc import Mapping
from email.message import EmailMessage
from email.utils import formatdate
from typing import Annotated, Literal, NoReturn

import aiosmtplib
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    FilePath,
    SecretStr,
    StringConstraints,
    field_validator,
    model_validator,
)

from dispatcher.channels import classify, mime, smtppipe
from dispatcher.channels.base import OutboundMessage, SendReceipt
from dispatcher.channels.smtppool import SmtpPool
from dispatcher.channels.templates import EmailTemplate, RenderedEmail, render_email
from dispatcher.events.kinds import ChannelKind
from dispatcher.events.schema import ENDPOINT_NAME_PATTERN
from dispatcher.resilience.delivery_policy import ChannelDelivery

ProviderName = Annotated[str, StringConstraints(pattern=ENDPOINT_NAME_PATTERN)]
_QUEUE_ID = re.compile(r"queued as (\S+)", re.IGNORECASE)


class SmtpProvider(BaseModel):
    """One SMTP relay. Certificates are always verified; ``ca_file`` adds a private CA."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: ProviderName
    host: str = Field(min_length=1)
    #: ``None`` picks the mode's standard port: 25, 587 (STARTTLS) or 465 (TLS).
    port: int | None = Field(default=None, ge=1, le=65535)
    #: ``starttls`` fails rather than fall back to plain text when the relay lacks it.
    tls: Literal["none", "starttls", "tls"] = "starttls"
    username: str | None = None
    password: SecretStr | None = None
    from_address: str = Field(min_length=3, max_length=320)
    #: Per SMTP operation (connect, each command); the worker adds the overall deadline.
    timeout: float = Field(default=10.0, gt=0, le=300)
    pool_size: int = Field(default=4, ge=1, le=100)
    ca_file: FilePath | None = None

    @field_validator("from_address")
    @classmethod
    def _check_from(cls, value: str) -> str:
        # It goes into a header and the envelope: no spaces, controls or line breaks.
        if "@" not in value or any(c.isspace() or not c.isprintable() for c in value):
            raise ValueError(
                "from_address must be a bare address like alerts@example.org"
            )
        return value

    @model_validator(mode="after")
    def _check_credentials(self) -> "SmtpProvider":
        if (self.username is None) != (self.password is None):
            raise ValueError("username and password go together")
        if self.username is not None and self.tls == "none":
            raise ValueError("credentials are never sent over a connection without TLS")
        return self


class EmailChannelConfig(ChannelDelivery):
    """The email channel: relays in failover order, and templates per event type."""

    enabled: bool = False
    concurrency: int = Field(default=16, ge=1, le=1000)
    #: Overall deadline of one attempt, around every SMTP operation of it.
    deadline_seconds: float = Field(default=30.0, gt=0, le=600)
    providers: list[SmtpProvider] = Field(default_factory=list)
    #: Event type pattern (``crisis.*``, ``fnmatch``) -> subject and body.
    templates: dict[str, EmailTemplate] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check_providers(self) -> "EmailChannelConfig":
        if self.enabled and not self.providers:
            raise ValueError("the email channel is enabled but has no providers")
        names = [provider.name for provider in self.providers]
        if len(names) != len(set(names)):
            raise ValueError("provider names must be unique")
        return self


def tls_context(ca_file: FilePath | None) -> ssl.SSLContext:
    """Verifying context: the system CAs, or only ``ca_file`` when given."""
    context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


class SmtpChannel:
    """The email ``Channel`` for one relay, over a pool of reused connections."""

    kind = ChannelKind.EMAIL

    def __init__(
        self,
        provider: SmtpProvider,
        *,
        templates: Mapping[str, EmailTemplate] | None = None,
    ) -> None:
        self.name = provider.name
        self._provider = provider
        self._templates = dict(templates or {})
        self._tls = None if provider.tls == "none" else tls_context(provider.ca_file)
        self._pool = SmtpPool(
            self._connect, provider.pool_size, quit_timeout=provider.timeout
        )

    @property
    def connections_opened(self) -> int:
        """Connections opened so far (reuse keeps this low)."""
        return self._pool.opened

    async def send(self, message: OutboundMessage, /) -> SendReceipt:
        """Send one email.

        Raises:
            TransientDeliveryError: SMTP 4xx, timeouts, refused or broken connections,
                TLS failures.
            PermanentDeliveryError: SMTP 5xx, or a template that cannot be rendered.
        """
        sender = self._provider.from_address
        try:
            rendered = render_email(self._templates, message)
            if mime.is_plain_address(sender) and mime.is_plain_address(
                message.recipient
            ):
                data = mime.plain_text_email(
                    sender=sender,
                    recipient=message.recipient,
                    subject=rendered.subject,
                    body=rendered.body,
                    delivery_id=message.delivery_id,
                    event_id=message.event_id,
                )
                async with self._pool.connection() as client:
                    # Two round trips instead of four once EHLO has shown PIPELINING.
                    if smtppipe.usable(client):
                        reply = await smtppipe.sendmail(
                            client, sender, message.recipient, data
                        )
                    else:
                        _, reply = await client.sendmail(
                            sender, [message.recipient], data
                        )
            else:
                # Non-ASCII address: the stdlib's message and aiosmtplib's SMTPUTF8.
                email = self._build(message, rendered)
                async with self._pool.connection() as client:
                    _, reply = await client.send_message(
                        email, sender=sender, recipients=[message.recipient]
                    )
        except (aiosmtplib.SMTPException, OSError) as exc:
            _raise(exc)
        except ValueError:
            # A CR/LF or similar in the address; the library's text quotes it.
            raise classify.invalid_recipient("email address") from None
        match = _QUEUE_ID.search(reply)
        return SendReceipt(
            provider=self.name,
            provider_code="250",
            provider_message_id=match.group(1) if match else None,
        )

    async def aclose(self) -> None:
        await self._pool.aclose()

    def _build(self, message: OutboundMessage, rendered: RenderedEmail) -> EmailMessage:
        email = EmailMessage()
        email["From"] = self._provider.from_address
        email["To"] = message.recipient
        email["Subject"] = rendered.subject
        email["Date"] = formatdate(usegmt=True)
        # Stable across retries: a receiver that got an earlier attempt de-duplicates.
        email["Message-ID"] = f"<{message.delivery_id}@dispatcher>"
        email["X-Dispatcher-Event-Id"] = str(message.event_id)
        email["X-Dispatcher-Delivery-Id"] = str(message.delivery_id)
        email.set_content(rendered.body)
        return email

    async def _connect(self) -> aiosmtplib.SMTP:
        provider = self._provider
        client = aiosmtplib.SMTP(
            hostname=provider.host,
            port=provider.port,
            username=provider.username,
            password=provider.password.get_secret_value()
            if provider.password
            else None,
            timeout=provider.timeout,
            use_tls=provider.tls == "tls",
            start_tls=provider.tls == "starttls",
            validate_certs=True,
            tls_context=self._tls,
        )
        await client.connect()
        return client


def _raise(exc: Exception) -> NoReturn:
    error = classify.exception(exc)
    # A relay's reply text can quote the recipient: keep it out of the chain.
    if isinstance(
        exc, aiosmtplib.SMTPResponseException | aiosmtplib.SMTPRecipientsRefused
    ):
        raise error from None
    raise error from exc


def build_channels(config: EmailChannelConfig) -> list[SmtpChannel]:
    """One adapter per relay, in failover order; empty when the channel is disabled."""
    if not config.enabled:
        return []
    return [
        SmtpChannel(provider, templates=config.templates)
        for provider in config.providers
    ]
