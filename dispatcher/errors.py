"""The whole error taxonomy of the dispatcher, in one place.

The class docstring is the default message. Driver errors are translated once, at the edge
(``db/engine.py: wrap_db_errors`` and ``channels/classify.py``), and chained with ``from``.
"""

from enum import StrEnum


class DispatcherError(Exception):
    """Unexpected dispatcher error."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or self.__doc__)


class ConfigError(DispatcherError, ValueError):
    """Invalid configuration."""


class MissingExtra(DispatcherError, ImportError):
    """An optional part of dispatcher is not installed."""

    def __init__(self, extra: str, module: str) -> None:
        super().__init__(
            f"the optional extra '{extra}' is not installed (no module {module}):"
            f" pip install 'dispatcher[{extra}]'"
        )
        self.extra = extra


class StorageUnavailable(DispatcherError):
    """PostgreSQL is unreachable or the connection broke; the operation may be retried."""


class StorageFault(StorageUnavailable):
    """PostgreSQL answered with an error that is neither bad data nor an outage (a missing
    column, a syntax error, a privilege): a schema or code bug. It is a kind of
    unavailability, so loops that wait out outages (the recorder, claims) wait it out too,
    loudly; ingest tells it apart and isolates the message instead of waiting forever."""


class StorageConflict(DispatcherError):
    """PostgreSQL refused the data (constraint or value error); retrying will not help."""


class PublishError(DispatcherError):
    """The broker did not confirm the publish."""


class ErrorClass(StrEnum):
    """Why a delivery attempt failed; stored on attempts and deliveries."""

    #: The attempt ran past its overall deadline.
    TIMEOUT = "timeout"
    #: Every pooled connection to the provider stayed busy past the wait limit: not sent.
    BUSY = "busy"
    #: The message was handed over and no reply came: the provider may have accepted it.
    INDETERMINATE = "indeterminate"
    #: TCP connection refused, reset or broken.
    CONNECTION = "connection"
    #: The host name could not be resolved.
    DNS = "dns"
    #: TLS handshake or certificate verification failed.
    TLS = "tls"
    #: The provider answered with a retryable status (HTTP 5xx/408/429, SMTP 4xx, Twilio 20429).
    PROVIDER_TRANSIENT = "provider_transient"
    #: The provider refused the message for good (HTTP 4xx, SMTP 5xx, invalid number).
    PROVIDER_PERMANENT = "provider_permanent"
    #: The provider asked us to slow down (HTTP 429, Twilio 20429).
    RATE_LIMITED = "rate_limited"
    #: The webhook endpoint answered 410 Gone: it wants no more deliveries.
    GONE = "gone"
    #: The endpoint answered with a redirect, which is never followed.
    REDIRECT = "redirect"
    #: The destination address is not allowed (SSRF guard, bad URL).
    FORBIDDEN_DESTINATION = "forbidden_destination"
    #: The message could not be rendered from its template.
    TEMPLATE = "template"
    #: The recipient is not usable by this channel (unknown endpoint, bad address).
    INVALID_RECIPIENT = "invalid_recipient"
    #: The channel or provider is not configured.
    NOT_CONFIGURED = "not_configured"
    #: Anything else; treated as transient.
    UNKNOWN = "unknown"


class DeliveryError(DispatcherError):
    """A delivery attempt failed."""

    def __init__(
        self,
        error_class: ErrorClass,
        message: str | None = None,
        *,
        provider_code: str | None = None,
    ) -> None:
        super().__init__(message or f"{self.__doc__} ({error_class})")
        self.error_class = error_class
        self.provider_code = provider_code


class TransientDeliveryError(DeliveryError):
    """A delivery attempt failed in a way that a later attempt may not."""

    def __init__(
        self,
        error_class: ErrorClass,
        message: str | None = None,
        *,
        provider_code: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(error_class, message, provider_code=provider_code)
        self.retry_after = retry_after


class PermanentDeliveryError(DeliveryError):
    """A delivery attempt failed in a way that no retry can fix; dead-letter now."""


class CircuitOpen(DispatcherError):
    """The provider's circuit breaker is open: the attempt is deferred, not made."""
