"""The small vocabularies shared by events, routing, deliveries and channels."""

from enum import StrEnum


class Severity(StrEnum):
    """How urgent an event is; it sets the priority of its deliveries."""

    #: Someone may be at risk right now.
    CRITICAL = "critical"
    #: Needs attention within minutes.
    HIGH = "high"
    #: Needs attention within hours.
    MEDIUM = "medium"
    #: Informational with some follow-up.
    LOW = "low"
    #: Informational only.
    INFO = "info"

    @property
    def priority(self) -> int:
        """Claim priority of deliveries: 0 is claimed first."""
        return _PRIORITY[self]

    def at_least(self, other: "Severity") -> bool:
        """True when this severity is as urgent as ``other`` or more."""
        return _PRIORITY[self] <= _PRIORITY[other]


_PRIORITY = {
    Severity.CRITICAL: 0,
    Severity.HIGH: 1,
    Severity.MEDIUM: 2,
    Severity.LOW: 3,
    Severity.INFO: 4,
}

#: The priority of the least urgent deliveries: a claim up to it takes every severity.
LEAST_URGENT = max(_PRIORITY.values())


class ChannelKind(StrEnum):
    """A delivery channel."""

    #: SMTP, through aiosmtplib.
    EMAIL = "email"
    #: SMS, through the Twilio API.
    SMS = "sms"
    #: An HTTP POST to a configured endpoint, signed per Standard Webhooks.
    WEBHOOK = "webhook"
