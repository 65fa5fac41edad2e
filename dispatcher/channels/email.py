"""Email through SMTP relays: the adapter for one relay (configuration: ``email_config.py``).

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
from email.message import EmailMessage
from email.utils import formatdate
from typing import NoReturn

import aiosmtplib
from aiosmtplib.email import flatten_message
from pydantic import (
    FilePath,
)

from dispatcher.channels import classify, mime, smtppipe
from dispatcher.channels.base import OutboundMessage, SendReceipt
from dispatcher.channels.email_config import (
    EmailChannelConfig,
    SendLimits,
    SmtpProvider,
)
from dispatcher.channels.smtppool import SmtpPool
from dispatcher.channels.templates import EmailTemplate, RenderedEmail, render_email
from dispatcher.errors import TransientDeliveryError
from dispatcher.events.kinds import ChannelKind, Severity

_QUEUE_ID = re.compile(r"queued as (\S+)", re.IGNORECASE)


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
