"""Email through SMTP relays: configuration and the adapter for one relay.

One try has three phases, each with its own limit, because each ends differently:

1. waiting for one of the relay's pooled connections (``connection_wait_seconds``): past
   it nothing was sent, and the try ends ``busy``;
2. from the moment a connection is lent until the message's final dot is written
   (``deadline_seconds``): past it the relay cannot have the whole message, and the try
   ends ``timeout``;
3. the reply to the final dot (``final_reply_seconds``): the relay may accept the message
   at any moment now, so no reply in time (or a lost connection) ends the try
   ``indeterminate``, and its retry carries the same Message-ID.
"""

import asyncio
import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate
from typing import Annotated, ClassVar, Literal, NoReturn, Self

import aiosmtplib
from aiosmtplib.email import flatten_message
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
from dispatcher.errors import TransientDeliveryError
from dispatcher.events.kinds import ChannelKind, Severity
from dispatcher.events.schema import ENDPOINT_NAME_PATTERN
from dispatcher.resilience.delivery_policy import ChannelDelivery

ProviderName = Annotated[str, StringConstraints(pattern=ENDPOINT_NAME_PATTERN)]
_QUEUE_ID = re.compile(r"queued as (\S+)", re.IGNORECASE)

#: Defaults of the three phase limits (see the module docstring), in seconds.
CONNECTION_WAIT: float = 10.0
DEADLINE: float = 30.0
FINAL_REPLY: float = 60.0


@dataclass(frozen=True, slots=True)
class SendLimits:
    """How long each phase of one try may take, in seconds."""

    connection_wait: float = CONNECTION_WAIT
    deadline: float = DEADLINE
    final_reply: float = FINAL_REPLY

    @property
    def total(self) -> float:
        """The longest one try can take: every phase at its limit."""
        return self.connection_wait + self.deadline + self.final_reply


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
    #: Per SMTP operation (connect, each command) before the final dot, whose reply has
    #: the channel's ``final_reply_seconds``; the try's phase limits bound them all.
    timeout: float = Field(default=10.0, gt=0, le=300)
    #: Connections to this relay at most, ``pool_critical_reserve`` of them included.
    pool_size: int = Field(default=5, ge=1, le=100)
    #: Connections of ``pool_size`` only critical deliveries may take (at most
    #: ``pool_size - 1``), as ``critical_reserve`` keeps worker slots.
    pool_critical_reserve: int = Field(default=1, ge=0, le=99)
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

    try_settings: ClassVar[str] = (
        "connection_wait_seconds + deadline_seconds + final_reply_seconds"
    )
    enabled: bool = False
    concurrency: int = Field(default=16, ge=1, le=1000)
    #: Longest wait for a pooled connection; past it the try ends unsent (``busy``).
    connection_wait_seconds: float = Field(default=CONNECTION_WAIT, gt=0, le=600)
    #: From a lent connection to the final dot written, around every SMTP operation.
    deadline_seconds: float = Field(default=DEADLINE, gt=0, le=600)
    #: Longest wait for the reply to the final dot; past it ``indeterminate``.
    final_reply_seconds: float = Field(default=FINAL_REPLY, gt=0, le=600)
    #: Longer than every relay's tries together (``limits().total`` each).
    lease_seconds: float = Field(default=240.0, gt=0, le=3600)
    providers: list[SmtpProvider] = Field(default_factory=list)
    #: Event type pattern (``crisis.*``, ``fnmatch``) -> subject and body.
    templates: dict[str, EmailTemplate] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check_providers(self) -> Self:
        if self.enabled and not self.providers:
            raise ValueError("the email channel is enabled but has no providers")
        names = [provider.name for provider in self.providers]
        if len(names) != len(set(names)):
            raise ValueError("provider names must be unique")
        return self

    def limits(self) -> SendLimits:
        """The phase limits of one try."""
        return SendLimits(
            connection_wait=self.connection_wait_seconds,
            deadline=self.deadline_seconds,
            final_reply=self.final_reply_seconds,
        )

    def try_seconds(self) -> float:
        return self.limits().total


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
        limits: SendLimits | None = None,
    ) -> None:
        self.name = provider.name
        self._provider = provider
        self._templates = dict(templates or {})
        self._limits = limits or SendLimits()
        #: The adapter bounds its own phases; this is the longest a send can take.
        self.time_limit: float | None = self._limits.total
        self._tls = None if provider.tls == "none" else tls_context(provider.ca_file)
        self._pool = SmtpPool(
            self._connect,
            provider.pool_size,
            critical_reserve=provider.pool_critical_reserve,
            quit_timeout=provider.timeout,
        )

    @property
    def connections_opened(self) -> int:
        """Connections opened so far (reuse keeps this low)."""
        return self._pool.opened

    async def send(self, message: OutboundMessage, /) -> SendReceipt:
        """Send one email, through a reserved connection if it is critical.

        Raises:
            TransientDeliveryError: SMTP 4xx, timeouts, refused or broken connections,
                TLS failures; ``busy`` when no connection came free in time (nothing
                was sent); ``indeterminate`` when the message was handed over and its
                reply never came (with ``retry_after`` the final-reply limit).
            PermanentDeliveryError: SMTP 5xx, or a template that cannot be rendered.
        """
        sender, recipient = self._provider.from_address, message.recipient
        clock = _Clock(self._limits)
        try:
            rendered = render_email(self._templates, message)
            plain = mime.is_plain_address(sender) and mime.is_plain_address(recipient)
            # Otherwise (a non-ASCII address) the stdlib's message, with SMTPUTF8.
            email = None if plain else self._build(message, rendered)
            data = (
                b""
                if email is not None
                else mime.plain_text_email(
                    sender=sender,
                    recipient=recipient,
                    subject=rendered.subject,
                    body=rendered.body,
                    delivery_id=message.delivery_id,
                    event_id=message.event_id,
                )
            )
            async with (
                clock.timeout,
                self._pool.connection(
                    critical=message.severity is Severity.CRITICAL, lent=clock.lent
                ) as client,
            ):
                await smtppipe.greet(client)
                options: tuple[str, ...] = ()
                if email is not None:
                    utf8 = not (sender + recipient).isascii()
                    data, options = _flatten(email, client, utf8=utf8)
                reply = await smtppipe.sendmail(
                    client,
                    sender,
                    recipient,
                    data,
                    mail_options=options,
                    deadline=clock.timeout,
                    final_reply_timeout=self._limits.final_reply,
                )
        except TimeoutError as exc:
            if not clock.timeout.expired():
                _raise(exc)  # one SMTP operation's timeout
            raise clock.expiry() from None
        except smtppipe.ReplyLost as exc:
            raise classify.indeterminate(
                exc, retry_after=self._limits.final_reply
            ) from exc
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


class _Clock:
    """One try's deadline, moved along as the try passes its phases.

    It first bounds the wait for a pooled connection; once one is lent it becomes the
    send's deadline; ``smtppipe.sendmail`` lifts it when the final dot goes out.
    """

    def __init__(self, limits: SendLimits) -> None:
        self._limits = limits
        self._lent = False
        self.timeout = asyncio.timeout(limits.connection_wait)

    def lent(self) -> None:
        self._lent = True
        deadline = asyncio.get_running_loop().time() + self._limits.deadline
        self.timeout.reschedule(deadline)

    def expiry(self) -> TransientDeliveryError:
        """What the timeout's expiry means in the phase it came in: nothing was sent."""
        if not self._lent:
            return classify.busy(self._limits.connection_wait)
        return classify.deadline_passed(self._limits.deadline)


def _flatten(
    email: EmailMessage, client: aiosmtplib.SMTP, *, utf8: bool
) -> tuple[bytes, tuple[str, ...]]:
    """The bytes and MAIL parameters of a stdlib message, as aiosmtplib's
    ``send_message`` makes them: SMTPUTF8 when an address needs it (``utf8``), 8-bit
    if the relay allows it."""
    options: list[str] = []
    if utf8:
        if not client.supports_extension("smtputf8"):
            raise aiosmtplib.SMTPNotSupported("the relay does not offer SMTPUTF8")
        options.append("SMTPUTF8")
    eight_bit = client.supports_extension("8bitmime")
    if eight_bit:
        options.append("BODY=8BITMIME")
    cte_type = "8bit" if eight_bit else "7bit"
    return flatten_message(email, utf8=utf8, cte_type=cte_type), tuple(options)


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
        SmtpChannel(provider, templates=config.templates, limits=config.limits())
        for provider in config.providers
    ]
