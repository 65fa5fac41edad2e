"""The email channel's configuration: relays in failover order, the phase limits of a try.

One try has three phases, each with its own limit, because each ends differently (the
adapter, ``channels/email.py``, applies them): waiting for a pooled connection, the send
up to the final dot, and the reply to the final dot.
"""

from dataclasses import dataclass
from typing import ClassVar, Literal

from pydantic import (
    Field,
    FilePath,
    SecretStr,
    field_validator,
    model_validator,
)

from dispatcher.channels.failover_config import FailoverChannelConfig, Provider
from dispatcher.channels.templates import EmailTemplate

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


class SmtpProvider(Provider):
    """One SMTP relay. Certificates are always verified; ``ca_file`` adds a private CA."""

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


class EmailChannelConfig(FailoverChannelConfig[SmtpProvider]):
    """The email channel: relays in failover order, and templates per event type."""

    try_settings: ClassVar[str] = (
        "connection_wait_seconds + deadline_seconds + final_reply_seconds"
    )
    channel_label: ClassVar[str] = "email"
    concurrency: int = Field(default=16, ge=1, le=1000)
    #: Longest wait for a pooled connection; past it the try ends unsent (``busy``).
    connection_wait_seconds: float = Field(default=CONNECTION_WAIT, gt=0, le=600)
    #: From a lent connection to the final dot written, around every SMTP operation.
    deadline_seconds: float = Field(default=DEADLINE, gt=0, le=600)
    #: Longest wait for the reply to the final dot; past it ``indeterminate``.
    final_reply_seconds: float = Field(default=FINAL_REPLY, gt=0, le=600)
    #: Longer than every relay's tries together (``limits().total`` each).
    lease_seconds: float = Field(default=240.0, gt=0, le=3600)
    #: Event type pattern (``crisis.*``, ``fnmatch``) -> subject and body.
    templates: dict[str, EmailTemplate] = Field(default_factory=dict)

    def limits(self) -> SendLimits:
        """The phase limits of one try."""
        return SendLimits(
            connection_wait=self.connection_wait_seconds,
            deadline=self.deadline_seconds,
            final_reply=self.final_reply_seconds,
        )

    def try_seconds(self) -> float:
        return self.limits().total
